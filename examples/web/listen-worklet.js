// AudioWorklet of the page's Listen mode: collects the microphone's render quanta (128 frames) into
// blocks of BLOCK frames per channel and posts each block to the page ({channels: [Float32Array...]}).
// Its output stays silent: it is connected to the destination only so that the graph pulls it.
const BLOCK = 2048;

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.blocks = null; // one Float32Array(BLOCK) per channel
    this.filled = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0) return true; // no stream connected yet
    if (!this.blocks || this.blocks.length !== input.length) {
      this.blocks = input.map(() => new Float32Array(BLOCK));
      this.filled = 0;
    }
    let done = 0;
    const frames = input[0].length;
    while (done < frames) {
      const take = Math.min(frames - done, BLOCK - this.filled);
      input.forEach((channel, c) => this.blocks[c].set(channel.subarray(done, done + take), this.filled));
      this.filled += take;
      done += take;
      if (this.filled === BLOCK) {
        this.port.postMessage({ channels: this.blocks }, this.blocks.map((b) => b.buffer));
        this.blocks = input.map(() => new Float32Array(BLOCK));
        this.filled = 0;
      }
    }
    return true;
  }
}

registerProcessor("asc-capture", CaptureProcessor);
