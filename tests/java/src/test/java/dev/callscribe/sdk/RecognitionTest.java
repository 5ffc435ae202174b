package dev.callscribe.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assertions.assertNull;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.alibaba.dashscope.audio.asr.recognition.Recognition;
import com.alibaba.dashscope.audio.asr.recognition.RecognitionParam;
import com.alibaba.dashscope.audio.asr.recognition.RecognitionResult;
import com.alibaba.dashscope.audio.asr.recognition.timestamp.Sentence;
import com.alibaba.dashscope.audio.asr.recognition.timestamp.Word;
import com.alibaba.dashscope.common.ResultCallback;
import io.reactivex.BackpressureStrategy;
import io.reactivex.Flowable;
import java.nio.ByteBuffer;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Set;
import java.util.concurrent.CompletableFuture;
import java.util.concurrent.TimeUnit;
import java.util.stream.Collectors;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The run-task family (Fun-ASR / Paraformer) through the SDK's Recognition class. */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class RecognitionTest {

  static RecognitionParam param(String model, String format, int rate) {
    return RecognitionParam.builder()
        .model(model)
        .format(format)
        .sampleRate(rate)
        .parameter("language_hints", new String[] {"en"})
        .build();
  }

  /** Runs call(param, callback) + sendAudioFrame + stop(); every result, in order. */
  static List<RecognitionResult> stream(Recognition rec, RecognitionParam param, List<byte[]> frames)
      throws Exception {
    List<RecognitionResult> results = new ArrayList<>();
    CompletableFuture<Void> done = new CompletableFuture<>();
    rec.call(param, new ResultCallback<RecognitionResult>() {
      @Override
      public void onEvent(RecognitionResult r) {
        synchronized (results) {
          results.add(r);
        }
      }

      @Override
      public void onComplete() {
        done.complete(null);
      }

      @Override
      public void onError(Exception e) {
        done.completeExceptionally(e);
      }
    });
    for (byte[] f : frames) {
      rec.sendAudioFrame(ByteBuffer.wrap(f));
    }
    rec.stop(); // returns after task-finished
    done.get(60, TimeUnit.SECONDS);
    return results;
  }

  static List<Sentence> finals(List<RecognitionResult> results) {
    return results.stream().filter(RecognitionResult::isSentenceEnd)
        .map(RecognitionResult::getSentence).collect(Collectors.toList());
  }

  static String text(List<Sentence> sentences) {
    return Support.norm(sentences.stream().map(Sentence::getText).collect(Collectors.joining(" ")));
  }

  /** Sentence ids count up from 1; each sentence's first result, and only that, says
   *  isSentenceBegin; finals say isSentenceEnd and have words inside [begin, end]. */
  static void assertSentenceShape(List<RecognitionResult> results) {
    Set<Long> seen = new HashSet<>();
    long expectedId = 1;
    for (RecognitionResult r : results) {
      Sentence s = r.getSentence();
      if (s.isHeartbeat()) {
        continue;
      }
      boolean first = !seen.contains(s.getSentenceId());
      assertEquals(first, r.isSentenceBegin(), "isSentenceBegin of " + s);
      if (first) {
        assertEquals(expectedId++, s.getSentenceId(), "sentence ids count up: " + s);
        seen.add(s.getSentenceId());
      }
      assertNotNull(s.getBeginTime());
      if (r.isSentenceEnd()) {
        assertNotNull(s.getEndTime());
        assertTrue(s.getEndTime() > s.getBeginTime(), s.toString());
        List<Word> words = s.getWords();
        assertFalse(words.isEmpty(), s.toString());
        for (Word w : words) {
          assertTrue(w.getBeginTime() >= s.getBeginTime() && w.getEndTime() <= s.getEndTime()
              && w.getBeginTime() <= w.getEndTime(), w + " in " + s);
        }
      } else {
        assertNull(s.getEndTime(), "an interim result has no end_time: " + s);
      }
    }
    assertFalse(seen.isEmpty(), "no sentence at all");
  }

  static void assertDelaysReported(Recognition rec) {
    System.out.printf("  first package delay %d ms, last package delay %d ms%n",
        rec.getFirstPackageDelay(), rec.getLastPackageDelay());
    assertTrue(rec.getFirstPackageDelay() > 0, "first package delay not reported");
    assertTrue(rec.getLastPackageDelay() >= 0, "last package delay not reported");
  }

  @Test
  void callOnAFile() throws Exception {
    Path jfk = Support.audio("en_jfk_16k.wav");
    Recognition rec = new Recognition();
    String out = rec.call(param("fun-asr-realtime", "wav", 16000), jfk.toFile());
    assertNotNull(out);
    String text = Support.norm(out);
    assertTrue(text.contains("fellow americans") && text.contains("your country"), out);
    assertDelaysReported(rec);
  }

  /** The vendor's microphone example: format("wav"), raw 16-bit PCM frames, no header. */
  @Test
  void sendAudioFrameWavWithRawPcm() throws Exception {
    Path jfk = Support.audio("en_jfk_16k.wav");
    Recognition rec = new Recognition();
    List<RecognitionResult> results = stream(rec, param("paraformer-realtime-v2", "wav", 16000),
        Support.chunks(Support.pcmOf(jfk), 3200));
    assertSentenceShape(results);
    List<Sentence> finals = finals(results);
    String text = text(finals);
    assertTrue(text.contains("fellow americans") && text.contains("for your country"), text);
    // finish-task closed the last sentence: it ends with its last word, not at 11000 ms
    Sentence last = finals.get(finals.size() - 1);
    List<Word> words = last.getWords();
    assertEquals(words.get(words.size() - 1).getEndTime(), last.getEndTime(), last.toString());
    assertTrue(last.getEndTime() < 10900, last.toString());
    for (Sentence s : finals) {
      assertNull(s.getEmoTag(), "the vendor has no emo_tag on this model: " + s);
    }
    assertDelaysReported(rec);
  }

  @Test
  void sendAudioFramePcm() throws Exception {
    Path wav = Support.audio("en_ps_librivox_0880.wav");
    Recognition rec = new Recognition();
    List<RecognitionResult> results = stream(rec, param("fun-asr-realtime", "pcm", 16000),
        Support.chunks(Support.pcmOf(wav), 3200));
    assertSentenceShape(results);
    String text = text(finals(results));
    assertTrue(text.contains("ill disposed young man"), text);
    assertDelaysReported(rec);
  }

  /** A telephone-rate model; paraformer-realtime-8k-v2 is the one the vendor gives emotion. */
  @Test
  void eightKilohertzModel() throws Exception {
    Path wav = Support.audio("en_ldc93s1_8k.wav");
    Recognition rec = new Recognition();
    List<RecognitionResult> results = stream(rec, param("paraformer-realtime-8k-v2", "pcm", 8000),
        Support.chunks(Support.pcmOf(wav), 1600));
    assertSentenceShape(results);
    List<Sentence> finals = finals(results);
    String text = text(finals);
    assertTrue(text.contains("dark suit") || text.contains("greasy") || text.contains("wash"),
        text);
    for (Sentence s : finals) {
      assertTrue(List.of("positive", "negative", "neutral").contains(s.getEmoTag()), s.toString());
      assertTrue(s.getEmoConfidence() > 0.0 && s.getEmoConfidence() <= 1.0, s.toString());
    }
    assertDelaysReported(rec);
  }

  @Test
  void streamCallWithAFlowable() throws Exception {
    Path wav = Support.audio("en_ps_librivox_0890.wav");
    byte[] data = Files.readAllBytes(wav); // a wav file, header included, in 3200-byte pieces
    Flowable<ByteBuffer> audio = Flowable.create(emitter -> {
      for (byte[] c : Support.chunks(data, 3200)) {
        emitter.onNext(ByteBuffer.wrap(c));
      }
      emitter.onComplete();
    }, BackpressureStrategy.BUFFER);
    Recognition rec = new Recognition();
    List<RecognitionResult> results = new ArrayList<>();
    rec.streamCall(param("fun-asr-realtime", "wav", 16000), audio)
        .blockingForEach(results::add);
    assertSentenceShape(results);
    String text = text(finals(results));
    assertTrue(text.contains("cold hearted") && text.contains("selfish"), text);
    assertDelaysReported(rec);
  }

  /** Several tasks one after another, as an application reuses its Recognition object. */
  @Test
  void oneRecognitionObjectRunsSeveralTasks() throws Exception {
    Path wav = Support.audio("en_ps_librivox_0880.wav");
    Recognition rec = new Recognition();
    for (int i = 0; i < 2; i++) {
      List<RecognitionResult> results = stream(rec, param("fun-asr-realtime", "pcm", 16000),
          Support.chunks(Support.pcmOf(wav), 6400));
      assertTrue(text(finals(results)).contains("young man"), "task " + i);
    }
  }
}
