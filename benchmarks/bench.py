"""maskvit benchmarks: print measured numbers for the machine this runs on; assert nothing.

    python benchmarks/bench.py --data PATH [--skip-eval] [--target-epochs 7 [--target-model mae] [--target-hparams K=V,...] [--target-optimizer muon]] [--workers]

1. Training throughput (images/s, median of interleaved timed windows) of the seed and mae
   presets through maskvit's real pipeline (tf.data masks + Keras fit), beside a plain
   tf.function training step of the seed model on in-memory tensors, in the same run.
2. Evaluation throughput of `maskvit evaluate --grid` (5 strategies x 3 ratios, all metrics) on the
   test set, the command run in its own process; then where the shipped model's grid time goes
   (importance scoring, inference, metrics), stage by stage in a process set up as the command's.
3. Wall time from the start of training to PSNR >= 22.75 dB on the full test set at random 50%.
4. (--workers) `maskvit train` as one process and as two tf.distribute workers on 127.0.0.1
   (MultiWorkerMirroredStrategy), same global batch: training images/s of the whole cluster.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from maskvit.cli import quiet_tensorflow  # noqa: E402  (it also sets TF_CPP_MIN_LOG_LEVEL=2 unless set)

quiet_tensorflow()  # the numbers on stdout, and no start-up lines of TensorFlow's on stderr
import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from maskvit import data, distribute, evaluate, importance, masking, models, train  # noqa: E402

ROUNDS, WARMUP, WINDOW = 6, 3, 20


class WindowTimer(keras.callbacks.Callback):
    """Seconds taken by the last WINDOW steps of a fit call (the WARMUP steps before them untimed)."""

    def on_train_batch_end(self, batch, logs=None):
        if batch == WARMUP - 1:
            self.t0 = time.perf_counter()
        elif batch == WARMUP + WINDOW - 1:
            self.seconds = time.perf_counter() - self.t0


def reference_seed(images, batch_size):
    """The seed model trained by a bare tf.function step on in-memory tensors: no tf.data, no fit.
    Returns a function that runs one window and gives its seconds."""
    keras.utils.set_random_seed(0)
    model, opt = models.build("seed"), keras.optimizers.Adam(1e-3)
    x = tf.constant(images[: batch_size * 8].astype(np.float32) / 255.0)
    m = masking.make_masks("random", 0.5, batch_size * 8, [0, 0])

    @tf.function
    def step(x, m):
        with tf.GradientTape() as tape:
            loss = models.masked_mse(x, model((x, m), training=True), m)
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    def window():
        for i in range(WARMUP + WINDOW):
            if i == WARMUP:
                t0 = time.perf_counter()
            j = (i % 8) * batch_size
            step(x[j : j + batch_size], m[j : j + batch_size]).numpy()
        return time.perf_counter() - t0

    return window


def preset_fit(images, config):
    """config's model trained as `maskvit train` would (tf.data masks, Keras fit, the recipe's
    optimizer and loss); returns a function that runs one window (a short fit call) and gives its
    seconds."""
    keras.utils.set_random_seed(0)
    keras.mixed_precision.set_global_policy("mixed_bfloat16" if config.precision == "bfloat16" else "float32")
    try:
        model = models.build(config.model, **config.hparams)  # layers keep the policy they were built under
    finally:
        keras.mixed_precision.set_global_policy("float32")
    model.compile(optimizer=train.make_optimizer(config, steps_per_epoch=100))
    model.loss_kind = config.loss
    ds, _ = data.train_pipeline(images, config.batch_size, "random", 0.5, seed=0)
    timer = WindowTimer()

    def window():
        model.fit(ds, epochs=1, steps_per_epoch=WARMUP + WINDOW, callbacks=[timer], verbose=0, shuffle=False)
        return timer.seconds

    return window


def training_rates(images):
    """Images/s of each contestant, timed in interleaved rounds: this machine's speed drifts by
    10-20% over minutes, and a ratio of windows run seconds apart is steadier than one of runs
    minutes apart. Prints each contestant's median rate and the median of its per-round ratios."""
    contestants = [("plain tf.function seed step, batch 128:", 128, reference_seed(images, 128))]
    for preset, batch, precision, hparams in (("seed", 128, "float32", ""), ("mae", 128, "float32", ""), ("mae", 256, "float32", ""),
                                              ("mae", 256, "bfloat16", ""), ("mae-refine", 256, "bfloat16", ""),
                                              ("mae-refine", 256, "bfloat16", "decode_visible=false")):
        # The seed with the seed recipe (Adam, MSE, as the reference step), the others with the fast one's.
        config = train.TrainConfig(recipe="seed" if preset == "seed" else "fast", model=preset, batch_size=batch, precision=precision,
                                   hparams=models.parse_hparams(hparams, preset))
        contestants.append((f"maskvit {preset:10s} fit, batch {batch}, {precision}, {config.optimizer}{' ' + hparams if hparams else ''}:", batch,
                            preset_fit(images, config)))
    for _, _, window in contestants:  # tracing and the first batches
        window()
    rates = [[batch * WINDOW / window() for _, batch, window in contestants] for _ in range(ROUNDS)]
    width = max(len(label) for label, _, _ in contestants)
    for i, (label, _, _) in enumerate(contestants):
        rate = statistics.median(r[i] for r in rates)
        ratios = [r[i] / r[0] for r in rates]
        note = "reference" if i == 0 else f"range {min(ratios):.2f}-{max(ratios):.2f}"
        print(f"{label:{width}s} {rate:7.0f}  ({statistics.median(ratios):.2f}x, {note})")


def cpu_name() -> str:
    """The CPU's model name (Linux reports none through platform.processor()), else the architecture."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=None, help="CIFAR-10 archive or folder (default: $MASKVIT_DATA)")
    parser.add_argument("--skip-eval", action="store_true")
    parser.add_argument("--workers", action="store_true", help="also time 1 process vs 2 local tf.distribute workers")
    parser.add_argument("--target-epochs", type=int, default=0,
                        help="also train the fast recipe (random 50%% masks) for this many epochs, timing PSNR >= 22.75 dB")
    parser.add_argument("--target-model", default="mae-refine", choices=list(models.MODELS), help="the model trained for --target-epochs")
    parser.add_argument("--target-hparams", default="depth=2", help="its --hparams (default: a 2-block encoder, the fastest size to 22.75 dB measured; '' for the preset's size)")
    parser.add_argument("--target-optimizer", default=train.RECIPES["fast"]["optimizer"], choices=list(train.OPTIMIZERS["fast"]), help="its optimizer (train --optimizer)")
    parser.add_argument("--target-only", action="store_true", help=argparse.SUPPRESS)  # the child processes below
    parser.add_argument("--profile-only", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.target_only:
        time_to_target(args, data.load_split("test", args.data)[0])
        return
    if args.profile_only:
        grid_profile(data.load_split("test", args.data)[0])
        return
    print(f"machine: {cpu_name()}, {os.cpu_count()} CPUs, python {platform.python_version()}, "
          f"tensorflow {tf.__version__}, keras {keras.__version__}")
    train_images, _ = data.load_split("train", args.data)
    test_images, _ = data.load_split("test", args.data)

    print(f"\n# training throughput, images/s: median of {ROUNDS} interleaved rounds of {WINDOW} steps per contestant"
          f" ({WARMUP} untimed steps before each); ratio: median of the per-round ratios to the reference")
    training_rates(train_images)

    if not args.skip_eval:
        cells = len(evaluate.GRID_STRATEGIES) * len(evaluate.GRID_RATIOS)
        print(f"\n# evaluate --grid: {', '.join(evaluate.GRID_STRATEGIES)} x {evaluate.GRID_RATIOS}, full test set, all metrics")
        # The stage-1 model is in the checkout's saved_models/ (an installed wheel carries only the default).
        stage1 = os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir, "saved_models", "maskvit_mae_decoder128.keras")
        for name, path in (("shipped mae-refine", None), ("stage-1 mae", stage1)):
            # The command itself, in its own process: it sets TensorFlow's threads for inference
            # (distribute.one_thread_per_op), which this process, having trained, no longer can.
            with tempfile.TemporaryDirectory() as tmp:
                result = os.path.join(tmp, "grid.json")
                command = [sys.executable, "-m", "maskvit", "evaluate", *([path] if path else []), "--grid", "--json", result,
                           *(["--data", args.data] if args.data else [])]
                t0 = time.perf_counter()
                run = subprocess.run(command, capture_output=True, text=True)
                wall = time.perf_counter() - t0
                if run.returncode:
                    print(f"{name:18s} failed: {run.stderr.strip()}")
                    continue
                seconds = json.loads(Path(result).read_text())["seconds"]
            print(f"{name:18s} {seconds:6.1f} s for {cells} cells = {cells * len(test_images) / seconds:.0f} images/s"
                  f" ({wall:.0f} s wall with start-up)")
        sys.stdout.flush()
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--profile-only", *sys.argv[1:]])
        if child.returncode:
            print(f"grid profile: its process failed (exit {child.returncode})")

    if args.target_epochs:
        # In a fresh process, as `maskvit train` starts: after the contestants above, this process's
        # TensorFlow once failed to trace the new model's inference (autograph called a converted
        # `objective` unbound: TypeError, missing 'y_pred'); alone, the same run passes.
        sys.stdout.flush()
        child = subprocess.run([sys.executable, os.path.abspath(__file__), "--target-only", *sys.argv[1:]])
        if child.returncode:
            print(f"time to target: its process failed (exit {child.returncode})")
    if args.workers:
        workers_rate(args)


def grid_profile(test_images, seed=0):
    """The shipped model's `evaluate --grid`, stage by stage, with the command's thread setup
    (so in a process that has run nothing else): importance scoring once, then per cell the
    masks, the model's inference and the metrics."""
    distribute.one_thread_per_op()  # as evaluate does, before TensorFlow's first op
    net = models.load()
    print("\n# where the shipped model's evaluate --grid time goes (the same work, stage by stage)")
    t0 = time.perf_counter()
    scores = importance.scores(net, test_images, seed)
    ranking = time.perf_counter() - t0
    originals = test_images.astype(np.float32) / 255.0
    stages = {"masks": [], "inference": [], "metrics": []}
    for strategy in evaluate.GRID_STRATEGIES:
        for ratio in evaluate.GRID_RATIOS:
            t0 = time.perf_counter()
            masks = evaluate.masks_for(strategy, ratio, test_images, seed, net, scores)
            t1 = time.perf_counter()
            recon = evaluate.reconstruct(net, test_images, masks)
            t2 = time.perf_counter()
            evaluate.image_metrics(originals, recon, masks)
            for stage, seconds in zip(stages, (t1 - t0, t2 - t1, time.perf_counter() - t2)):
                stages[stage].append(seconds)
    print(f"{'importance scoring':18s} {ranking:6.1f} s  ({importance.PROBES} probe passes, forward and backward, per image)")
    for stage, times in stages.items():
        traced = f", the first {times[0]:.2f} s with tracing" if stage == "inference" else ""
        print(f"{stage:18s} {sum(times):6.1f} s  ({min(times):.2f}-{max(times):.2f} s a cell{traced})")
    print(f"{'sum':18s} {ranking + sum(map(sum, stages.values())):6.1f} s")


def time_to_target(args, test_images, target=22.75):
    """Train a model from scratch under the fast recipe on random 50% masks; after each epoch score
    the full test set there."""
    hparams = models.parse_hparams(args.target_hparams, args.target_model)
    print(f"\n# time to PSNR >= {target} dB (full test set, random 50%), {' '.join(filter(None, (args.target_model, args.target_hparams)))} from scratch, fast recipe ({args.target_optimizer}), random 50% masks,"
          f" {args.target_epochs}-epoch schedule; training time only (the per-epoch test evaluation is excluded)")
    config = train.TrainConfig(recipe="fast", model=args.target_model, optimizer=args.target_optimizer, mask="random", epochs=args.target_epochs,
                               hparams=hparams, data=args.data, output="/tmp/maskvit-bench", resume=False)

    class Probe(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.train_seconds, self.t0 = 0.0, None

        def on_epoch_begin(self, epoch, logs=None):
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            self.train_seconds += time.perf_counter() - self.t0
            psnr = evaluate.evaluate(self.model, test_images, "random", 0.5)["psnr"]["mean"]
            print(f"epoch {epoch + 1}: {self.train_seconds:6.0f} s of training, test PSNR {psnr:.2f} dB", flush=True)
            if psnr >= target:
                print(f"reached {target} dB after {self.train_seconds:.0f} s of training", flush=True)
                self.model.stop_training = True

    train.train(config, progress=Probe())


def workers_rate(args, limit=10_000, epochs=3):
    """The fast recipe on `limit` images for `epochs` epochs, as 1 process and as 2 workers; the
    chief's run JSON gives images/s over the epochs after the first (graph tracing)."""
    print(f"\n# tf.distribute: fast recipe (mae, bf16, global batch 256), {limit} images, {epochs} epochs, images/s after epoch 1")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    common = ["--recipe", "fast", "--model", "mae", "--epochs", str(epochs), "--limit", str(limit), "--no-resume", *(["--data", args.data] if args.data else [])]
    for n in (1, 2):
        out = tempfile.mkdtemp(prefix="maskvit-workers-")
        sockets = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
        cluster = [f"127.0.0.1:{s.getsockname()[1]}" for s in sockets]
        for s in sockets:
            s.close()
        procs = []
        for index in range(n):
            extra = ["--strategy", "multiworker"] if n > 1 else []
            tf_config = {"TF_CONFIG": json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})} if n > 1 else {}
            procs.append(subprocess.Popen([sys.executable, "-m", "maskvit", "train", *common, *extra, "--output", out],
                                          env={**env, **tf_config}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
        t0 = time.perf_counter()
        errors = [p.communicate()[1] for p in procs]
        if any(p.returncode for p in procs):
            print(f"{n} worker(s): failed: {' | '.join(e.strip() for e in errors)}")
            continue
        record = json.loads((Path(out) / "mae_random50_run.json").read_text())
        print(f"{n} process(es) on {os.cpu_count()} shared CPUs: {record['train_images_per_second']:6.0f} images/s, "
              f"{time.perf_counter() - t0:.0f} s wall including start-up")


if __name__ == "__main__":
    sys.exit(main())
