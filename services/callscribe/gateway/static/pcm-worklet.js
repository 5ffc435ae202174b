// AudioWorklet: microphone audio at the context's rate -> 16 kHz mono s16le in ~100 ms chunks.
//
// Channels are averaged to mono, low-pass filtered (windowed-sinc FIR, when downsampling) so
// nothing above the new Nyquist folds back, then resampled by linear interpolation.  Every
// `chunkSamples` output samples go to the page as one transferred ArrayBuffer of Int16 (little
// endian on every platform that runs a browser).  Messages from the page: {type: "flush"}
// posts what is left (a short last chunk), then {type: "flushed"}; {type: "stop"} ends it.
"use strict";

const TAPS = 63;

function lowpass(cutoff) {
  // cutoff in cycles per input sample (0 .. 0.5); Blackman window; unity gain at DC
  const h = new Float32Array(TAPS);
  const m = (TAPS - 1) / 2;
  let sum = 0;
  for (let n = 0; n < TAPS; n++) {
    const x = n - m;
    const sinc = x === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * x) / (Math.PI * x);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * n) / (TAPS - 1))
      + 0.08 * Math.cos((4 * Math.PI * n) / (TAPS - 1));
    h[n] = sinc * w;
    sum += h[n];
  }
  for (let n = 0; n < TAPS; n++) h[n] /= sum;
  return h;
}

class Pcm16kProcessor extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const o = (options && options.processorOptions) || {};
    this.outRate = o.targetRate || 16000;
    this.chunkSamples = o.chunkSamples || 1600;
    this.step = sampleRate / this.outRate; // input samples per output sample
    this.fir = this.step > 1 ? lowpass((0.5 / this.step) * 0.9) : null;
    this.hist = new Float32Array(TAPS * 2); // history written twice: no wrap in the dot product
    this.hpos = 0;
    this.prev = 0; // previous filtered sample (position 0 of the current interval)
    this.t = 0; // next output position, in input samples after `prev`
    this.out = new Int16Array(this.chunkSamples);
    this.n = 0;
    this.alive = true;
    this.port.onmessage = (e) => {
      const msg = e.data || {};
      if (msg.type === "flush") {
        this.emitChunk();
        this.port.postMessage({ type: "flushed" });
      } else if (msg.type === "stop") {
        this.alive = false;
      }
    };
  }

  emitChunk() {
    if (this.n === 0) return;
    const buf = this.n === this.chunkSamples ? this.out.buffer : this.out.slice(0, this.n).buffer;
    this.port.postMessage(buf, [buf]);
    this.out = new Int16Array(this.chunkSamples);
    this.n = 0;
  }

  filter(x) {
    if (!this.fir) return x;
    const h = this.fir;
    const p = this.hpos;
    this.hist[p] = x;
    this.hist[p + TAPS] = x;
    this.hpos = (p + 1) % TAPS;
    // hist[hpos .. hpos+TAPS) is oldest .. newest
    let acc = 0;
    const base = this.hpos;
    for (let k = 0; k < TAPS; k++) acc += h[k] * this.hist[base + k];
    return acc;
  }

  push(x) {
    const y = this.filter(x);
    const prev = this.prev;
    while (this.t < 1) {
      let v = prev + this.t * (y - prev);
      v = v < -1 ? -1 : v > 1 ? 1 : v;
      this.out[this.n++] = v < 0 ? v * 32768 : v * 32767;
      if (this.n === this.chunkSamples) this.emitChunk();
      this.t += this.step;
    }
    this.t -= 1;
    this.prev = y;
  }

  process(inputs) {
    const input = inputs[0];
    if (input && input.length > 0) {
      const channels = input.length;
      const frames = input[0].length;
      for (let i = 0; i < frames; i++) {
        let s = 0;
        for (let c = 0; c < channels; c++) s += input[c][i];
        this.push(s / channels);
      }
    }
    return this.alive;
  }
}

registerProcessor("pcm-16k", Pcm16kProcessor);
