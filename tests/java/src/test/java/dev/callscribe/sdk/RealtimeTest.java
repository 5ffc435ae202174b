package dev.callscribe.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.alibaba.dashscope.audio.omni.OmniRealtimeCallback;
import com.alibaba.dashscope.audio.omni.OmniRealtimeConfig;
import com.alibaba.dashscope.audio.omni.OmniRealtimeConversation;
import com.alibaba.dashscope.audio.omni.OmniRealtimeModality;
import com.alibaba.dashscope.audio.omni.OmniRealtimeParam;
import com.alibaba.dashscope.audio.omni.OmniRealtimeTranscriptionParam;
import com.google.gson.JsonObject;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.Base64;
import java.util.Collections;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Qwen-ASR realtime through the SDK's OmniRealtimeConversation, VAD and manual mode. */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class RealtimeTest {
  static final String MODEL = "qwen3-asr-flash-realtime";
  static final String TEXT = "conversation.item.input_audio_transcription.text";
  static final String COMPLETED = "conversation.item.input_audio_transcription.completed";

  /** Collects every server event; ``closed`` completes when the socket closes. */
  static final class Events extends OmniRealtimeCallback {
    final List<JsonObject> all = Collections.synchronizedList(new ArrayList<>());
    final CompletableFuture<Integer> closed = new CompletableFuture<>();
    final Map<String, CompletableFuture<JsonObject>> completedByItem = new HashMap<>();
    final CompletableFuture<JsonObject> firstCompleted = new CompletableFuture<>();

    @Override
    public void onEvent(JsonObject event) {
      all.add(event);
      if (COMPLETED.equals(event.get("type").getAsString())) {
        firstCompleted.complete(event);
      }
    }

    @Override
    public void onClose(int code, String reason) {
      closed.complete(code);
    }

    List<JsonObject> of(String type) {
      synchronized (all) {
        return all.stream().filter(e -> type.equals(e.get("type").getAsString()))
            .collect(Collectors.toList());
      }
    }
  }

  static OmniRealtimeConversation open(Events events, boolean vad) throws Exception {
    OmniRealtimeParam param = OmniRealtimeParam.builder().model(MODEL)
        .url(Support.realtimeUrl()).apikey(Support.apiKey()).build();
    OmniRealtimeConversation conv = new OmniRealtimeConversation(param, events);
    conv.connect();
    OmniRealtimeTranscriptionParam tp = new OmniRealtimeTranscriptionParam();
    tp.setLanguage("en");
    tp.setInputAudioFormat("pcm");
    tp.setInputSampleRate(16000);
    conv.updateSession(OmniRealtimeConfig.builder()
        .modalities(Collections.singletonList(OmniRealtimeModality.TEXT))
        .enableTurnDetection(vad)
        .turnDetectionThreshold(0.2f)
        .turnDetectionSilenceDurationMs(800)
        .transcriptionConfig(tp)
        .build());
    return conv;
  }

  static void append(OmniRealtimeConversation conv, byte[] pcm) {
    for (byte[] c : Support.chunks(pcm, 3200)) { // 100 ms
      conv.appendAudio(Base64.getEncoder().encodeToString(c));
    }
  }

  /** Within each item, every .text event's text starts with the previous one's; language and
   *  emotion are strings on every .text and .completed event. */
  static void assertTextEvents(Events events) {
    Map<String, String> shown = new HashMap<>();
    for (JsonObject e : events.of(TEXT)) {
      String item = e.get("item_id").getAsString();
      String text = e.get("text").getAsString();
      String before = shown.getOrDefault(item, "");
      assertTrue(text.startsWith(before), "text retracted: '" + before + "' -> '" + text + "'");
      shown.put(item, text);
      e.get("stash").getAsString();
      assertFalse(e.get("language").getAsString().isEmpty());
    }
    for (JsonObject e : events.of(COMPLETED)) {
      assertFalse(e.get("language").getAsString().isEmpty(), e.toString());
      e.get("emotion").getAsString();
      e.get("transcript").getAsString();
    }
  }

  @Test
  void vadMode() throws Exception {
    Path jfk = Support.audio("en_jfk_16k.wav");
    Events events = new Events();
    OmniRealtimeConversation conv = open(events, true);
    append(conv, Support.concat(Support.pcmOf(jfk), new byte[32000])); // + 1 s of silence
    long sent = System.nanoTime();
    conv.endSession(); // returns on session.finished, then closes the socket itself
    assertEquals(1000, events.closed.get(30, TimeUnit.SECONDS));
    System.out.printf("  realtime VAD: endSession took %d ms%n",
        (System.nanoTime() - sent) / 1_000_000);
    assertTextEvents(events);
    List<JsonObject> started = events.of("input_audio_buffer.speech_started");
    List<JsonObject> stopped = events.of("input_audio_buffer.speech_stopped");
    List<JsonObject> done = events.of(COMPLETED);
    assertFalse(done.isEmpty());
    assertEquals(started.size(), stopped.size());
    for (int i = 0; i < started.size(); i++) {
      assertTrue(started.get(i).get("audio_start_ms").getAsLong()
          < stopped.get(i).get("audio_end_ms").getAsLong());
    }
    String text = Support.norm(done.stream().map(e -> e.get("transcript").getAsString())
        .collect(Collectors.joining(" ")));
    assertTrue(text.contains("fellow americans") && text.contains("your country"), text);
    assertEquals("session.finished", events.all.get(events.all.size() - 1).get("type")
        .getAsString());
  }

  @Test
  void manualMode() throws Exception {
    Path wav = Support.audio("en_ps_librivox_0880.wav");
    Events events = new Events();
    OmniRealtimeConversation conv = open(events, false);
    append(conv, Support.pcmOf(wav));
    conv.commit();
    JsonObject first = events.firstCompleted.get(60, TimeUnit.SECONDS);
    assertTrue(Support.norm(first.get("transcript").getAsString())
        .contains("ill disposed young man"), first.toString());
    // a commit of silence: an item with an empty transcript, and still a language string
    append(conv, new byte[16000]);
    conv.commit();
    conv.endSession();
    assertEquals(1000, events.closed.get(30, TimeUnit.SECONDS));
    List<JsonObject> done = events.of(COMPLETED);
    assertEquals(2, done.size(), done.toString());
    assertEquals("", done.get(1).get("transcript").getAsString());
    assertEquals("en", done.get(1).get("language").getAsString());
    assertEquals(2, events.of("input_audio_buffer.committed").size());
    assertTextEvents(events);
  }
}
