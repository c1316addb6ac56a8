"""Where the time of a training step goes: every method, APGA's waste, the per-image reference,
the rloo estimator, the cheaper agent and the data path. Prints measured figures and ratios (not a test).

    python benchmarks/bench_step.py                       # CPU preset (64 px, small nets), batch 25
    python benchmarks/bench_step.py --preset paper        # 224 px, DenseNet-169, UNet11 width 32
    python benchmarks/bench_step.py --preset paper --device cuda --amp 1

All steps, APGA's required passes and the per-image reference are timed in the same rounds
(each once per round, in turn, `repeats` rounds after `warmup` untimed ones, on one fixed
batch, in one process): times are medians over rounds and ratios medians of per-round ratios,
so that the machine's drift does not bias a ratio. FLOPs come from torch's FlopCounterMode
(forward and backward); peak GPU memory is measured per method on one extra step.
"""
from __future__ import annotations

import copy
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from apga.cli import script_command  # noqa: E402
from apga.training.checkpoint import save_checkpoint  # noqa: E402
from apga.config import make_config  # noqa: E402
from apga.data import CachedImages, cached_array, make_loader  # noqa: E402
from apga.data.cache import ImageFiles, keep_as_list  # noqa: E402
from apga.methods import METHODS  # noqa: E402
from apga.models import build_classifier  # noqa: E402
from apga.data.mura import load_split, select_body_part  # noqa: E402
from apga.experiment import build_method  # noqa: E402
from apga.data.synthetic import generate  # noqa: E402
from apga.training.loop import Precision, make_optimizers, run_step  # noqa: E402
from reference_apga import reference_step  # noqa: E402


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device, repeats, warmup) -> float:
    """Median seconds of fn() over `repeats` runs after `warmup` runs."""
    return timed_together({"fn": fn}, device, repeats, warmup)["fn"][0]


def timed_together(fns: dict, device, repeats, warmup) -> dict[str, tuple[float, list[float]]]:
    """Name -> (median seconds, per-round seconds), every fn timed once per round, in turn.

    Interleaving puts the things compared in the same rounds, so a ratio of two of them is not
    skewed by the machine getting slower or faster between one measurement and the next (a
    shared CPU drifts by tens of percent over a minute).
    """
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    rounds = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            rounds[name].append(time.perf_counter() - start)
    return {name: (statistics.median(times), times) for name, times in rounds.items()}


def round_ratio(numerator: list[float], denominator: list[float]) -> float:
    """Median over rounds of numerator / denominator (both timed in the same rounds)."""
    return statistics.median(n / d for n, d in zip(numerator, denominator))


def flops(fn) -> float:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def _method_and_step(name, config, device, precision, checkpoint):
    method = build_method(name, config, device, checkpoint)
    method.generator = torch.Generator(device).manual_seed(0)
    if name == "apga" and config.estimator == "greedy":
        method.estimator.reward_baseline = torch.zeros((), device=device)
    optimizers = make_optimizers(method)
    scaler = precision.scaler()

    def step(images, labels):
        # the relevance region the oracle keeps (the others ignore it): a fixed square, a third of the image
        side = images.shape[-1]
        bone = torch.zeros(len(images), 1, side, side, device=images.device)
        bone[..., side // 4:side * 3 // 4, side // 3:side * 2 // 3] = 1
        for _ in run_step(method, {"image": images, "label": labels, "bone": bone}, optimizers, scaler, precision):
            pass
    return method, optimizers, step


def main(preset: str = "cpu", device: str | None = None, batch_size: int = 25, repeats: int = 7, warmup: int = 2,
         amp: bool | None = None, channels_last: bool = True, loader_images: int = 400,
         methods: str = "all") -> None:
    """Print the step, waste, reference and data-path figures; `methods` is 'all' or a comma list."""
    config = make_config(preset=preset, batch_size=batch_size, amp=amp, channels_last=channels_last, gallery="off")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    precision = Precision.for_device(device, config.amp)
    torch.manual_seed(0)
    size = config.image_size
    images = torch.rand(batch_size, 3, size, size, device=device)
    if config.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (batch_size,), device=device)
    workdir = Path(tempfile.mkdtemp(prefix="apga-bench-"))
    checkpoint = workdir / "baseline.pt"
    save_checkpoint(checkpoint, {"classifier": build_classifier(config.classifier).state_dict()})
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {where}; preset {preset}: {size} px, {config.classifier}, UNet11 width {config.agent_width}, "
          f"batch {batch_size}, AMP {precision.dtype or 'off'}, "
          f"{'channels_last' if config.channels_last else 'contiguous (NCHW)'}; {repeats} rounds")
    # --- every method's step, APGA's required passes and the per-image reference -------------
    chosen = methods.split(",") if isinstance(methods, str) else list(methods)  # fire gives "a,b" as a tuple
    unknown = sorted(set(chosen) - set(METHODS) - {"all"})
    if unknown:
        raise SystemExit(f"error: unknown --methods {', '.join(unknown)}; choose from {', '.join(METHODS)} or all "
                         f"(APGA's variants are always timed)")
    names = list(METHODS) if chosen == ["all"] else sorted({"baseline", "apga", *chosen}, key=list(METHODS).index)
    steps, built = {}, {}
    for name in names:
        built[name] = _method_and_step(name, config, device, precision, checkpoint)
        steps[name] = functools.partial(built[name][2], images, labels)
    half = make_config(preset=preset, batch_size=batch_size, amp=amp, channels_last=channels_last, agent_scale=0.5)
    steps["apga[scale0.5]"] = functools.partial(
        _method_and_step("apga", half, device, precision, checkpoint)[2], images, labels)
    rloo = make_config(preset=preset, batch_size=batch_size, amp=amp, channels_last=channels_last, estimator="rloo")
    steps["apga[rloo]"] = functools.partial(
        _method_and_step("apga", rloo, device, precision, checkpoint)[2], images, labels)

    # APGA's required passes, each on its own: classifier forward+backward+step (twice in a
    # step), agent forward+backward+step, classifier eval forward, agent forward.
    apga_method, apga_optimizers, _ = built["apga"]
    classifier, agent = copy.deepcopy(apga_method.classifier), copy.deepcopy(apga_method.agent)
    classifier_optimizer = torch.optim.Adam(classifier.parameters(), lr=config.finetune_lr)
    agent_optimizer = torch.optim.Adam(agent.parameters(), lr=config.agent_lr)
    scaler = precision.scaler()

    def classifier_train():
        with precision.autocast():
            loss = torch.nn.functional.cross_entropy(classifier(images), labels)
        classifier_optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(classifier_optimizer)
        scaler.update()

    def agent_train():
        with precision.autocast():
            loss = agent(images).float().mean()
        agent_optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(agent_optimizer)
        scaler.update()

    @torch.no_grad()
    def classifier_eval():
        classifier.eval()
        with precision.autocast():
            classifier(images)
        classifier.train()

    @torch.no_grad()
    def agent_forward():
        with precision.autocast():
            agent(images)

    passes = {"classifier fwd+bwd+step": classifier_train, "agent fwd+bwd+step": agent_train,
              "classifier eval fwd": classifier_eval, "agent fwd": agent_forward}

    # The published per-image structure, on copies of the same networks.
    ref_classifier, ref_agent = copy.deepcopy(apga_method.classifier), copy.deepcopy(apga_method.agent)
    ref_opts = (torch.optim.Adam(ref_classifier.parameters(), lr=config.finetune_lr),
                torch.optim.Adam(ref_agent.parameters(), lr=config.agent_lr))
    state = {"baseline": 0.0}

    def reference():
        with precision.autocast():
            state["baseline"] = reference_step(ref_classifier, ref_agent, *ref_opts, images, labels, state["baseline"])

    timings = timed_together({**steps, **passes, "reference": reference}, device, repeats, warmup)
    step_time = {name: timings[name][0] for name in steps}
    step_flops = {name: flops(fn) for name, fn in steps.items()}
    peak = {}
    if device.type == "cuda":
        for name, fn in steps.items():
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            fn()
            peak[name] = torch.cuda.max_memory_allocated(device) / 2**30

    print("\n| method | images/s | step ms | time vs baseline | GFLOP/step | FLOPs vs baseline |"
          + (" peak GiB |" if peak else "") + "\n|---|---|---|---|---|---|" + ("---|" if peak else ""))
    for name, seconds in step_time.items():
        print(f"| {name} | {batch_size / seconds:.1f} | {seconds * 1e3:.1f} | {round_ratio(timings[name][1], timings['baseline'][1]):.2f}x "
              f"| {step_flops[name] / 1e9:.2f} | {step_flops[name] / step_flops['baseline']:.2f}x |"
              + (f" {peak[name]:.2f} |" if peak else ""))

    required_rounds = [2 * c + a + e + f for c, a, e, f in zip(*(timings[name][1] for name in passes))]
    print("\nAPGA's required passes, timed separately: "
          + ", ".join(f"{k} {timings[k][0] * 1e3:.1f} ms" for k in passes)
          + f"; sum with the classifier step twice {statistics.median(required_rounds) * 1e3:.1f} ms")
    waste = round_ratio(timings["apga"][1], required_rounds)
    speedup = round_ratio(timings["reference"][1], timings["apga"][1])
    reference_time = timings["reference"][0]

    # --- data path: PNG decoding vs the uint8 cache ----------------------------------------------
    data_root = workdir / "data"
    generate(data_root, seed=0, train_patients=max(1, loader_images // 3), valid_patients=1, parts=("elbow",))
    index = select_body_part(load_split(data_root, "train"), "elbow")
    files = [data_root / p for p in index["path"]]
    workers = config.num_workers

    def png_epoch():
        loader = torch.utils.data.DataLoader(ImageFiles(files, size), batch_size=batch_size, num_workers=workers,
                                             collate_fn=keep_as_list)
        for _ in loader:
            pass
    png_seconds = timed(png_epoch, torch.device("cpu"), 1, 0)
    array = cached_array(files, size, workdir / "cache").array
    cached = CachedImages(array, torch.arange(len(files)).numpy(), index["label"].to_numpy())
    cached_loader = make_loader(cached, batch_size, shuffle=True, seed=(0,))

    def cached_epoch():
        for _ in cached_loader:
            pass
    cached_seconds = timed(cached_epoch, torch.device("cpu"), 3, 1)

    # --- summary ------------------------------------------------------------------------------
    half_ratio = round_ratio(timings["apga[scale0.5]"][1], timings["baseline"][1])
    rloo_ratio = round_ratio(timings["apga[rloo]"][1], timings["apga"][1])
    apga_ratio = round_ratio(timings["apga"][1], timings["baseline"][1])
    print("\n| measure | value | target |\n|---|---|---|")
    print(f"| APGA step / sum of its required passes | {waste:.2f}x | <= 1.15x |")
    print(f"| APGA step vs per-image reference (speed-up) | {speedup:.2f}x "
          f"({reference_time * 1e3:.1f} ms vs {step_time['apga'] * 1e3:.1f} ms) | >= 1.5x on the CPU preset |")
    print(f"| half-size-agent APGA step / baseline step | {half_ratio:.2f}x | <= 4.5x at the paper's size |")
    print(f"| rloo APGA step ({rloo.policy_samples} samples) / greedy APGA step | {rloo_ratio:.2f}x | <= 1.3x at the CPU preset |")
    print(f"| data loader: cache vs PNG (images/s) | {len(files) / cached_seconds:.0f} vs {len(files) / png_seconds:.0f}"
          f" = {png_seconds / cached_seconds:.1f}x | >= 10x |")
    print(f"\nsummary: APGA {batch_size / step_time['apga']:.1f} images/s ({apga_ratio:.2f}x "
          f"a baseline step, {waste:.2f}x its required passes, {speedup:.2f}x faster than "
          f"the per-image reference); rloo {rloo_ratio:.2f}x greedy; half-size agent {half_ratio:.2f}x baseline; cached loader "
          f"{png_seconds / cached_seconds:.1f}x the PNG loader")


COMMAND = script_command(main, "python benchmarks/bench_step.py [--flag VALUE ...]", paths=())

if __name__ == "__main__":
    COMMAND.run(main, sys.argv[1:])
