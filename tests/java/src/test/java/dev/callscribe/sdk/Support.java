package dev.callscribe.sdk;

import static org.junit.jupiter.api.Assertions.assertNotNull;
import static org.junit.jupiter.api.Assumptions.assumeTrue;

import java.io.ByteArrayOutputStream;
import java.io.IOException;
import java.nio.ByteBuffer;
import java.nio.ByteOrder;
import java.nio.file.Files;
import java.nio.file.Path;
import java.text.Normalizer;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;

/** Where the server and the recordings are, and small helpers shared by the tests. */
final class Support {
  private Support() {}

  /** The recordings folder the runner passes (-Dcallscribe.audio); skip when absent. */
  static Path audio(String name) {
    String dir = System.getProperty("callscribe.audio", "");
    Path file = dir.isEmpty() ? null : Path.of(dir, name);
    assumeTrue(file != null && Files.isRegularFile(file),
        "real recordings not found (pass -Dcallscribe.audio=../shared/audio): " + name);
    return file;
  }

  /** The realtime endpoint; the SDK appends ?model= itself. */
  static String realtimeUrl() {
    String url = System.getenv("CALLSCRIBE_REALTIME_URL");
    assertNotNull(url, "CALLSCRIBE_REALTIME_URL is not set (the runner sets it)");
    return url;
  }

  static String apiKey() {
    String key = System.getenv("DASHSCOPE_API_KEY");
    assertNotNull(key, "DASHSCOPE_API_KEY is not set (the runner sets it)");
    return key;
  }

  /** Lower case, punctuation dropped, single spaces: the recordings' README rule. */
  static String norm(String text) {
    String t = Normalizer.normalize(text, Normalizer.Form.NFKC).toLowerCase(Locale.ROOT);
    return String.join(" ", t.replaceAll("[^\\p{L}\\p{N}\\s]", " ").trim().split("\\s+"));
  }

  /** The samples of a 16-bit PCM RIFF/WAVE file (the "data" chunk), little-endian bytes. */
  static byte[] pcmOf(Path wav) throws IOException {
    ByteBuffer b = ByteBuffer.wrap(Files.readAllBytes(wav)).order(ByteOrder.LITTLE_ENDIAN);
    b.position(12);
    while (b.remaining() >= 8) {
      byte[] id = new byte[4];
      b.get(id);
      int size = b.getInt();
      if (new String(id, java.nio.charset.StandardCharsets.US_ASCII).equals("data")) {
        byte[] out = new byte[Math.min(size, b.remaining())];
        b.get(out);
        return out;
      }
      b.position(b.position() + size + (size & 1));
    }
    throw new IOException("no data chunk in " + wav);
  }

  static List<byte[]> chunks(byte[] data, int size) {
    List<byte[]> out = new ArrayList<>();
    for (int i = 0; i < data.length; i += size) {
      out.add(java.util.Arrays.copyOfRange(data, i, Math.min(data.length, i + size)));
    }
    return out;
  }

  static byte[] concat(byte[]... parts) {
    ByteArrayOutputStream out = new ByteArrayOutputStream();
    for (byte[] p : parts) {
      out.writeBytes(p);
    }
    return out.toByteArray();
  }
}
