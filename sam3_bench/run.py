"""The benchmark: one run measures every column on the same machine, then writes JSON, markdown and a chart.

Columns: transformers eager (the alternative users have), the raw ONNX Runtime sessions (the floor
for our pipeline), the in-process predictor, and the gRPC services through the SDK.
"""

from __future__ import annotations

import argparse
import importlib.util
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from sam3_bench.images import synthetic_rgb
from sam3_bench.measure import Stats, run_child, time_calls
from sam3_serving.worker_process import WorkerProcess

REPO = Path(__file__).resolve().parent.parent
DEFAULT_FULL_MODEL = REPO / "models" / "full"
TINY_FIXTURE = REPO / "tests" / "fixtures" / "model-tiny"
SIZES = {"1920x1080": (1920, 1080), "4000x3000": (4000, 3000)}
CLIENT_COUNTS = (1, 2, 4, 8, 16)


def prompts_for(width: int, height: int) -> dict[str, list[dict]]:
    """The benchmark's prompts, in pixels of an image of this size."""

    def at(fx: float, fy: float) -> list[float]:
        return [round(fx * width, 1), round(fy * height, 1)]

    return {
        "1 click": [{"points": [at(0.5, 0.5)], "labels": [1]}],
        "5 clicks": [
            {
                "points": [at(0.5, 0.5), at(0.4, 0.6), at(0.6, 0.4), at(0.1, 0.1), at(0.9, 0.9)],
                "labels": [1, 1, 1, 0, 0],
            }
        ],
        "box": [{"box": [*at(0.25, 0.25), *at(0.75, 0.8)]}],
        "3 objects": [
            {"points": [at(0.2, 0.3)], "labels": [1]},
            {"points": [at(0.5, 0.7)], "labels": [1]},
            {"points": [at(0.8, 0.4)], "labels": [1]},
        ],
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model-dir", type=Path, help="model folder (default: models/full, exported if missing)")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run in about a minute: tiny fixture model, few repeats (no meaningful numbers)",
    )
    parser.add_argument("--json", type=Path, metavar="PATH", help="also copy the JSON report here")
    parser.add_argument("--out", type=Path, default=Path("bench-results"), help="report folder (default bench-results)")
    parser.add_argument(
        "--transformers-python",
        metavar="PYTHON",
        help="interpreter with torch + transformers + torchvision for the transformers column "
        "(default: this one; the column is skipped with a reason when they are missing)",
    )
    parser.add_argument("--repeats", type=int, help="timed repeats per latency measurement")
    parser.add_argument("--encoder-runs", type=int, help="encoder runs per variant")
    parser.add_argument("--sweep-seconds", type=float, help="duration of each concurrency level")
    parser.add_argument(
        "--soak",
        type=float,
        metavar="MINUTES",
        help="instead of the benchmark: MINUTES of 16 clients mixing encode and segment on one `sam3 serve` "
        "(tiny model unless --model-dir), reporting codes, p50/p99 and the worker's RSS over time",
    )
    parser.add_argument(
        "--concepts-only",
        action="store_true",
        help="only the concept column (needs a folder that serves concepts, e.g. tests/fixtures/model-tiny-concept)",
    )
    fleet = parser.add_argument_group("fleet mode")
    fleet.add_argument(
        "--fleet",
        action="store_true",
        help="instead of the columns: the click cache hit rate of a decoder fleet under round robin, "
        "affinity and affinity + prefetch (1 encoder and --fleet-decoders decoder processes)",
    )
    fleet.add_argument("--fleet-decoders", type=int, default=3, help="decoder replicas (default 3)")
    fleet.add_argument("--fleet-images", type=int, help="new images per routing (default 8; --quick 3)")
    fleet.add_argument("--fleet-clicks", type=int, help="clicks per image (default 10; --quick 4)")


def resolve_model(args: argparse.Namespace) -> Path:
    if args.model_dir:
        return args.model_dir
    if args.quick:
        if not TINY_FIXTURE.exists():
            raise SystemExit("--quick needs tests/fixtures/model-tiny (run from a clone) or --model-dir")
        return TINY_FIXTURE
    if not variants_in(DEFAULT_FULL_MODEL):
        print(f"no model at {DEFAULT_FULL_MODEL}: exporting the full-size random-weight model (minutes, ~12 GB RAM)")
        command = [
            sys.executable,
            "-m",
            "sam3_cli",
            "export",
            "--tracker-only",  # the bench measures clicks against Sam3TrackerModel rebuilt from the manifest
            "--random-init",
            "--config",
            "full",
            "--quantize",
            "int8",
            "--quantize",
            "q4",
            "--out",
            str(DEFAULT_FULL_MODEL),
        ]
        if subprocess.run(command, check=False).returncode != 0:
            raise SystemExit("export failed: install the export extra (pip install -e '.[export]') or pass --model-dir")
    return DEFAULT_FULL_MODEL


def variants_in(folder: Path) -> list[str]:
    from sam3_core.sources import graph_files

    return [graph.variant for graph in graph_files(folder, with_ids=False) if graph.role == "encoder"]


def encoder_configurations(folder: Path) -> list[tuple[str, str]]:
    """(variant, runtime) pairs to time: every variant under ONNX Runtime, and the fp32 graph under
    OpenVINO at f32 and bf16 when the openvino package is installed."""
    pairs = [(variant, "onnxruntime") for variant in variants_in(folder)]
    if importlib.util.find_spec("openvino") is not None and ("fp32", "onnxruntime") in pairs:
        pairs += [("fp32", "openvino-f32"), ("fp32", "openvino-bf16")]
    return pairs


def relative_rms(reference: Any, candidate: Any) -> float:
    """sqrt(sum of squared differences / sum of squares) over all three embeddings."""
    pairs = list(zip(reference.tensors, candidate.tensors, strict=True))
    error = sum(float(np.sum((np.asarray(c, np.float64) - r) ** 2)) for r, c in pairs)
    return (error / sum(float(np.sum(np.asarray(r, np.float64) ** 2)) for r, _ in pairs)) ** 0.5


def machine() -> dict[str, Any]:
    import grpc
    import onnxruntime

    cpu = "unknown"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        cpu = next(
            (
                line.split(":", 1)[1].strip()
                for line in cpuinfo.read_text().splitlines()
                if line.startswith("model name")
            ),
            cpu,
        )
    memory_gb = None
    meminfo = Path("/proc/meminfo")
    if meminfo.exists():
        memory_gb = round(int(meminfo.read_text().split()[1]) / 1024 / 1024, 1)
    import os

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": memory_gb,
        "platform": platform.platform(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "numpy": np.__version__,
        "grpcio": grpc.__version__,
    }


class Bench:
    """Holds the run's settings, images and results while the sections fill them in."""

    def __init__(self, args: argparse.Namespace, workdir: Path) -> None:
        self.args = args
        self.quick = args.quick
        self.model_dir = resolve_model(args)
        self.repeats = args.repeats or (5 if self.quick else 30)
        self.encoder_runs = args.encoder_runs or (1 if self.quick else 2)
        self.sweep_seconds = args.sweep_seconds or (1.0 if self.quick else 8.0)
        self.workdir = workdir
        self.images: dict[str, Path] = {}
        for seed, (name, (width, height)) in enumerate(SIZES.items()):
            from PIL import Image

            path = workdir / f"photo_{name}.jpg"
            Image.fromarray(synthetic_rgb(width, height, seed=100 + seed)).save(path, quality=90)
            self.images[name] = path
        self.results: dict[str, Any] = {"machine": machine(), "model_dir": str(self.model_dir), "quick": self.quick}

    def log(self, message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    # ------------------------------------------------------------ encoders (fresh process each)

    def encoders(self) -> None:
        """Every encoder variant under every runtime here: time, peak RSS, and against fp32 under ONNX
        Runtime the best-mask IoU on the bench prompts and the embeddings' relative RMS error."""
        from sam3_core.embeddings import deserialize
        from sam3_serving.store import EMBEDDINGS

        rows: dict[str, Any] = {}
        embeddings = {}
        for variant, runtime in encoder_configurations(self.model_dir):
            name = variant if runtime == "onnxruntime" else f"{variant}@{runtime}"
            self.log(f"encoder {name}: {self.encoder_runs} run(s) in a fresh process")
            blob = self.workdir / f"embeddings_{name}.bin"
            rows[name] = run_child(
                "encoder",
                {
                    "model_dir": str(self.model_dir),
                    "variant": variant,
                    "runtime": runtime,
                    "image": str(self.images["1920x1080"]),
                    "runs": self.encoder_runs,
                    "save_to": str(blob),
                },
            )
            if blob.exists():
                embeddings[name] = EMBEDDINGS.value(deserialize(blob.read_bytes()))
        if "fp32" in embeddings:
            for name, values in embeddings.items():
                rows[name]["mask_iou_vs_fp32"] = round(self._mask_iou(embeddings["fp32"], values), 4)
                rows[name]["embedding_rel_rms_vs_fp32"] = round(relative_rms(embeddings["fp32"], values), 5)
        self.results["encoders"] = rows

    def _mask_iou(self, reference: Any, candidate: Any) -> float:
        """Mean IoU of the best masks over the bench prompts, candidate embeddings vs fp32's."""
        from sam3_bench.fidelity import prompt_of
        from sam3_core.embeddings import ImageEmbeddings
        from sam3_core.predictor import Predictor

        predictor = Predictor(self.decoder_model)
        prompts = [prompt_of(o) for objects in prompts_for(1920, 1080).values() for o in objects]
        ious = []
        for embeddings in (reference, candidate):
            predictor.set_embeddings(
                ImageEmbeddings(embeddings.tensors, embeddings.original_size, self.decoder_model.model_id)
            )
            ious.append([p.mask(p.best_index) for p in predictor.predict_objects(prompts)])
        scores = [np.logical_and(a, b).sum() / max(np.logical_or(a, b).sum(), 1) for a, b in zip(*ious, strict=True)]
        return float(np.mean(scores))

    # ------------------------------------------------------------ transformers (fresh process)

    def transformers(self) -> None:
        self.log("transformers eager (processor + model + post_process_masks), in a fresh process")
        self.results["transformers"] = run_child(
            "transformers",
            {
                "model_dir": str(self.model_dir),
                "images": {name: str(path) for name, path in self.images.items()},
                "prompts": {name: prompts_for(width, height) for name, (width, height) in SIZES.items()},
                "encoder_runs": self.encoder_runs,
                "prompt_runs": max(3, self.repeats // 3),
            },
            python=self.args.transformers_python,
        )

    # ------------------------------------------------------------ raw sessions and in-process predictor

    @property
    def decoder_model(self) -> Any:
        if not hasattr(self, "_decoder_model"):
            from sam3_core.model import Sam3Model

            self._decoder_model = Sam3Model(self.model_dir, load_encoder=False)
        return self._decoder_model

    def decoder_and_predictor(self) -> None:
        """Raw decoder session per prompt (the floor) and the predictor's predict + best mask."""
        from sam3_bench.fidelity import float16_agreement, mask_agreement, prompt_of
        from sam3_core.embeddings import ImageEmbeddings, deserialize
        from sam3_core.model import RuntimeOptions, Sam3Model
        from sam3_core.predictor import Predictor
        from sam3_core.prompts import build_batches
        from sam3_serving.store import EMBEDDINGS

        blob = self.workdir / "embeddings_fp32.bin"
        if not blob.exists():
            self.log("no fp32 embeddings (the fp32 encoder run failed): skipping the decoder columns")
            return
        model = self.decoder_model
        base = EMBEDDINGS.value(deserialize(blob.read_bytes()))
        # The standard graph beside the split one (when the folder has it), interleaved in one run.
        decoders = {"raw_decoder": model}
        if model.split_decoder:
            standard = Sam3Model(self.model_dir, load_encoder=False, runtime=RuntimeOptions(split_decoder=False))
            decoders["raw_decoder_standard"] = standard
        prepared = {name: m.decoder_embeddings(base) for name, m in decoders.items()}
        raw: dict[str, dict[str, Any]] = {name: {} for name in decoders}
        predictor_rows = {}
        for size_name, (width, height) in SIZES.items():
            embeddings = ImageEmbeddings(base.tensors, (height, width), model.model_id)
            predictor = Predictor(model)
            predictor.set_embeddings(embeddings)
            for prompt_name, objects in prompts_for(width, height).items():
                prompts = [prompt_of(o) for o in objects]
                batches = build_batches(prompts, (height, width), model.preprocessing.size)
                key = f"{prompt_name}@{size_name}"
                for name, decoder in decoders.items() if size_name == "1920x1080" else ():
                    # The decoder session does not see the image size: one size is enough.
                    raw[name][prompt_name] = time_calls(
                        lambda batches=batches, decoder=decoder, ready=prepared[name]: [
                            decoder.run_decoder(b.points, b.labels, b.empty_boxes, ready) for b in batches
                        ],
                        self.repeats,
                        warmup=5,  # the first runs of a fresh session allocate; they are not the floor
                    ).as_dict()
                predictor_rows[key] = time_calls(
                    lambda prompts=prompts, predictor=predictor: [
                        p.mask_rle() for p in predictor.predict_objects(prompts)
                    ],
                    self.repeats,
                ).as_dict()
        self.results.update(raw)
        self.results["predictor"] = predictor_rows
        self.results["mask_rle"] = self._mask_rle_cost(predictor)
        self.log(f"raw decoder 1 click p50 {raw['raw_decoder']['1 click']['p50']:.1f} ms")
        sizes = {"1920x1080": SIZES["1920x1080"]} if self.quick else {**SIZES, "1080x1920": (1080, 1920)}
        self.results["float16_fidelity"] = float16_agreement(model, base, sizes, prompts_for)
        self.log(f"float16 store: worst mask agreement {self.results['float16_fidelity']['worst_agreement']:.6f}")
        if model.split_decoder:
            self.results["split_decoder"] = {
                "image_side": time_calls(lambda: model.decoder_embeddings(base), 5).as_dict(),
                "prepared_mb": round(prepared["raw_decoder"].nbytes / 1e6, 1),
                "fidelity": mask_agreement((standard, base), (model, base), sizes, prompts_for),
            }
            worst = self.results["split_decoder"]["fidelity"]["worst_agreement"]
            self.log(f"split decoder vs standard graph: worst mask agreement {worst:.6f}")

    def _mask_rle_cost(self, predictor: Any) -> dict[str, Any]:
        """Best mask -> COCO RLE at full size: this model's mask vs a smooth object-like one.

        Random weights give speckled masks (hundreds of thousands of runs at 1920x1080) where a trained
        model gives a few thousand; the cost of the mask step follows the number of runs.
        """
        from sam3_core.postprocess import upsample_logits_to_rle
        from sam3_core.prompts import Prompt

        (prediction,) = predictor.predict_objects([Prompt.of([[960.0, 540.0]])])
        yy, xx = np.mgrid[0:288, 0:288].astype(np.float32)
        smooth = ((60 - np.hypot(xx - 140, yy - 120)) / 10 + 3 * np.sin(xx / 9) * np.cos(yy / 13)).astype(np.float32)
        rows: dict[str, Any] = {}
        for name, logits in (("this model", prediction.low_res_logits[prediction.best_index]), ("smooth", smooth)):
            for size_name, (width, height) in SIZES.items():
                runs = len(upsample_logits_to_rle(logits, height, width).counts)
                stats = time_calls(lambda x=logits, h=height, w=width: upsample_logits_to_rle(x, h, w), self.repeats)
                rows[f"{name}@{size_name}"] = {"runs": runs, **stats.as_dict()}
        return rows

    # ------------------------------------------------------------ the services through the SDK

    def services(self) -> None:
        from sam3_client import Client, ObjectPrompt, Sam3Error
        from sam3_serving.redis_server import start_embedded_redis

        variant = self._fastest_variant()
        with start_embedded_redis(maxmemory="2gb") as redis_server:
            serve = self._spawn("serve", variant, redis_server.url)
            fetcher = self._spawn("decoder", variant, redis_server.url, "--cache-mb", "0")
            try:
                with Client(serve.target) as client, Client(fetcher.target) as fetching:
                    rows: dict[str, Any] = {"encoder_variant": variant}
                    ids = {}
                    for size_name, path in self.images.items():
                        first = client.encode(path)
                        ids[size_name] = first.image_id
                    forced, client_side = [], []
                    for _ in range(self.encoder_runs):
                        started = time.perf_counter()
                        forced.append(client.encode(self.images["1920x1080"], force=True))
                        client_side.append((time.perf_counter() - started) * 1000)
                    rows["encode_client_ms"] = Stats.of(client_side).as_dict()
                    rows["encode_server_total_ms"] = Stats.of([f.timings.get("total", 0.0) for f in forced]).as_dict()
                    rows["encode_model_ms"] = Stats.of([f.timings.get("model", 0.0) for f in forced]).as_dict()
                    for size_name, (width, height) in SIZES.items():
                        for prompt_name, objects in prompts_for(width, height).items():
                            request = [
                                ObjectPrompt(o.get("points", ()), o.get("labels"), o.get("box")) for o in objects
                            ]
                            rows[f"local_hit/{prompt_name}@{size_name}"] = time_calls(
                                lambda r=request, i=ids[size_name]: client.segment_objects(i, r), self.repeats
                            ).as_dict()
                        click = [ObjectPrompt(prompts_for(width, height)["1 click"][0]["points"])]
                        rows[f"redis_fetch/1 click@{size_name}"] = time_calls(
                            lambda r=click, i=ids[size_name]: fetching.segment_objects(i, r), self.repeats
                        ).as_dict()
                        for path, target in (("local_hit", serve.target), ("redis_fetch", fetcher.target)):
                            rows[f"rpc_{path}/1 click@{size_name}"] = self._segment_rpc(target, ids[size_name], click)
                    self.results["services"] = rows
                    self.results["concurrency"] = self._sweep(serve.target, ids["1920x1080"], Sam3Error)
            finally:
                serve.stop()
                fetcher.stop()

    def concepts(self) -> None:
        """The concept column, when the model folder serves concepts (a `sam3 models export` folder)."""
        from sam3_bench.concepts import PHRASE, measure
        from sam3_core.graphs import missing_concept_files
        from sam3_serving.redis_server import start_embedded_redis

        if missing_concept_files(self.model_dir):
            self.results["concepts"] = {"skipped": f"{self.model_dir} serves clicks only"}
            return
        variant = self._fastest_variant()
        self.log(f"concepts: serve + a fetching decoder ({variant})")
        with start_embedded_redis(maxmemory="4gb") as redis_server:
            serve = self._spawn("serve", variant, redis_server.url)
            fetcher = self._spawn("decoder", variant, redis_server.url)
            try:
                repeats = 1 if self.quick else 3
                image = self.images["1920x1080"]
                self.results["concepts"] = measure(serve.target, fetcher.target, redis_server.url, image, repeats)
            finally:
                serve.stop()
                fetcher.stop()
        self.log("concepts: transformers eager on the same weights, in a fresh process")
        self.results["concepts"]["transformers"] = run_child(
            "transformers_concepts",
            {"model_dir": str(self.model_dir), "image": str(image), "phrase": PHRASE, "runs": repeats},
            python=self.args.transformers_python,
        )

    def fleet(self) -> None:
        from sam3_bench.fleet import run_fleet

        variant = self._fastest_variant()
        self.log(f"fleet: 1 encoder ({variant}) + {self.args.fleet_decoders} decoders")
        self.results["fleet"] = run_fleet(
            self._spawn,
            variant,
            self.workdir,
            decoders=self.args.fleet_decoders,
            images=self.args.fleet_images or (3 if self.quick else 8),
            clicks=self.args.fleet_clicks or (4 if self.quick else 10),
        )

    def _segment_rpc(self, target: str, image_id: str, objects: list[Any]) -> dict[str, Any]:
        """The Segment RPC itself (best mask as RLE, no client-side decoding), with the server's stages."""
        import grpc

        from sam3_client import ChannelSettings
        from sam3_client._messages import segment_request
        from sam3_client.proto import decoder_pb2_grpc

        request = segment_request(image_id, objects, mask="best", mask_format="rle")
        stages: dict[str, list[float]] = {}
        with grpc.insecure_channel(target, options=ChannelSettings().options()) as channel:
            stub = decoder_pb2_grpc.DecoderServiceStub(channel)

            def call() -> None:
                response = stub.Segment(request, timeout=60)
                for stage, ms in response.timings.milliseconds.items():
                    stages.setdefault(stage, []).append(ms)

            row = time_calls(call, self.repeats).as_dict()
        row["server_stages_p50_ms"] = {stage: round(float(np.median(v)), 2) for stage, v in stages.items()}
        return row

    def _fastest_variant(self) -> str:
        """The fastest encoder configuration timed: a variant, or `variant@runtime` (see `_spawn`)."""
        encoders = self.results.get("encoders", {})
        timed = {v: r["model"]["p50"] for v, r in encoders.items() if "model" in r}
        return min(timed, key=timed.__getitem__) if timed else "fp32"

    def _spawn(self, command: str, configuration: str, redis_url: str, *extra: str) -> WorkerProcess:
        variant, _, runtime = configuration.partition("@")
        flags = ["--model-dir", str(self.model_dir), "--variant", variant, "--redis-url", redis_url]
        flags += ["--encoder-runtime", runtime] if runtime else []  # decoders too: it is part of the model id
        try:
            return WorkerProcess(command, *flags, "--log-level", "WARNING", *extra, start_timeout=300)
        except RuntimeError as error:
            raise SystemExit(str(error)) from error

    def _sweep(self, target: str, image_id: str, error_type: type) -> dict[str, Any]:
        """N clients, each with its own channel, clicking as fast as they can for a fixed time."""
        levels: dict[str, Any] = {}
        for clients in CLIENT_COUNTS:
            level = _concurrency_level(target, image_id, clients, self.sweep_seconds, error_type)
            levels[str(clients)] = level
            self.log(f"{clients:2d} clients: {level['throughput_per_s']:.1f}/s, p50 {level.get('p50', 0):.1f} ms")
        return levels


def _concurrency_level(target: str, image_id: str, clients: int, seconds: float, error_type: type) -> dict[str, Any]:
    from sam3_client import Client, ObjectPrompt

    click = [ObjectPrompt([[960.0, 540.0]])]
    latencies: list[float] = []
    errors: Counter[str] = Counter()
    lock = threading.Lock()
    stop_at = time.perf_counter() + seconds

    def worker() -> None:
        with Client(target) as client:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    client.segment_objects(image_id, click)
                except error_type as error:
                    with lock:
                        errors[error.code.name] += 1
                    continue
                with lock:
                    latencies.append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=worker) for _ in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    level: dict[str, Any] = {
        "throughput_per_s": round(len(latencies) / (time.perf_counter() - started), 2),
        "errors": dict(errors),
    }
    if latencies:
        level |= Stats.of(latencies).as_dict()
    return level


def run(args: argparse.Namespace) -> int:
    """`sam3 bench`: measure everything, print the table, write report.json / report.md / report.png."""
    from sam3_bench import report

    if args.soak is not None:
        from sam3_bench.soak import soak

        return soak(args)

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="sam3-bench-") as workdir:
        bench = Bench(args, Path(workdir))
        if args.fleet:
            bench.fleet()
        elif args.concepts_only:
            bench.concepts()
        else:
            bench.encoders()
            bench.transformers()
            bench.decoder_and_predictor()
            bench.services()
            bench.concepts()
        results = bench.results
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["ratios"] = report.ratios(results)
    paths = report.write(results, args.out)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(paths["json"], args.json)
    print(paths["markdown"].read_text())
    print(f"report: {', '.join(str(p) for p in paths.values())}", file=sys.stderr)
    return 0
