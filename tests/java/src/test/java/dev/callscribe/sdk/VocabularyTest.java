package dev.callscribe.sdk;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import com.alibaba.dashscope.audio.asr.recognition.Recognition;
import com.alibaba.dashscope.audio.asr.recognition.RecognitionParam;
import com.alibaba.dashscope.audio.asr.vocabulary.Vocabulary;
import com.alibaba.dashscope.audio.asr.vocabulary.VocabularyService;
import com.google.gson.JsonArray;
import com.google.gson.JsonObject;
import java.nio.file.Path;
import java.util.Arrays;
import java.util.concurrent.TimeUnit;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** Hotword vocabularies through VocabularyService, then used by a recognition task. */
@Timeout(value = 180, unit = TimeUnit.SECONDS)
class VocabularyTest {

  static JsonArray entries(String... words) {
    JsonArray out = new JsonArray();
    for (String w : words) {
      JsonObject e = new JsonObject();
      e.addProperty("text", w);
      e.addProperty("weight", 4);
      e.addProperty("lang", "en");
      out.add(e);
    }
    return out;
  }

  @Test
  void createQueryListUseUpdateDelete() throws Exception {
    Path wav = Support.audio("en_ps_librivox_0870.wav");
    VocabularyService service = new VocabularyService(Support.apiKey());
    Vocabulary created = service.createVocabulary("fun-asr-realtime", "javasdk",
        entries("Dashwood", "prudently"));
    String id = created.getVocabularyId();
    assertTrue(id != null && id.contains("javasdk"), String.valueOf(id));

    Vocabulary queried = service.queryVocabulary(id);
    assertEquals("fun-asr-realtime", queried.getTargetModel());
    assertEquals("OK", queried.getStatus());
    assertEquals(2, queried.getVocabulary().size());
    assertTrue(Arrays.stream(service.listVocabulary("javasdk"))
        .anyMatch(v -> id.equals(v.getVocabularyId())));

    Recognition rec = new Recognition();
    String out = rec.call(RecognitionParam.builder().model("fun-asr-realtime").format("wav")
        .sampleRate(16000).vocabularyId(id)
        .parameter("language_hints", new String[] {"en"}).build(), wav.toFile());
    String text = Support.norm(out);
    assertTrue(text.contains("dashwood") && text.contains("leisure to consider"), out);

    service.updateVocabulary(id, entries("Dashwood"));
    assertEquals(1, service.queryVocabulary(id).getVocabulary().size());
    service.deleteVocabulary(id);
    assertThrows(Exception.class, () -> service.queryVocabulary(id));
  }
}
