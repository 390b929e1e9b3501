"""Tracking's figures (docs/video.md has them):

- the comparison (default): the cost of tracking one frame, per object, ours (ONNX Runtime, objects batched) vs
  transformers' eager `Sam3TrackerVideoModel` (objects one at a time) on the same weights, in the steady
  state: 1 prompted + 6 recent memories and 16 object pointers per object. Needs torch and transformers
  (the export extra); the folder's video graphs must come from `TrackerVideoExport` at the same --config
  and --seed, so that transformers rebuilds the very same weights. Frame features and memories are random:
  cost does not depend on their values.
- `--long FRAMES`: a long synthetic video through a session, torch-free: state bytes and peak RSS as frames go by.

    PYTHONPATH=. python -m sam3_bench.tracking --model-dir models/full-video --config full --objects 1 4 16
    python -m sam3_bench.tracking --model-dir tests/fixtures/model-tiny-video --long 1000
"""

from __future__ import annotations

import argparse
import resource
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

RECENT, POINTERS = 7, 16  # memories and pointers of an object in the steady state


def _timed(run: Callable[..., Any], *args: Any) -> tuple[float, Any]:
    """(seconds, result) of one call."""
    started = time.perf_counter()
    result = run(*args)
    return time.perf_counter() - started, result


def measure(model_dir: Path, config: str, seed: int, objects: list[int], threads: int) -> list[dict[str, float]]:
    import torch

    from sam3_core.model import RuntimeOptions
    from sam3_core.tracking import VideoGraphs
    from sam3_export.video import TrackerVideoExport

    torch.set_num_threads(threads)
    graphs = VideoGraphs(model_dir, runtime=RuntimeOptions(intra_op_threads=threads))
    tracker = TrackerVideoExport.build(checkpoint=None, config=config, seed=seed).model
    channels, (height, width) = tracker.hidden_dim, tracker.backbone_feature_sizes[-1]
    rng = np.random.default_rng(0)

    def random(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32)

    e0, e1, e2 = (
        random(1, channels // 8, 4 * height, 4 * width),
        random(1, channels // 4, 2 * height, 2 * width),
        random(1, channels, height, width),
    )
    rows = []
    for count in [1, *objects]:  # the first run warms both runtimes up and is not reported
        memory, pointers = random(count, RECENT, tracker.mem_dim, height, width), random(count, POINTERS, channels)
        memory_time = np.tile(np.array([6, 5, 4, 3, 2, 1, 0]), (count, 1))
        pointer_time = np.tile(np.arange(POINTERS, dtype=np.float32) / (POINTERS - 1), (count, 1))
        points, labels = np.zeros((count, 2, 2), np.float32), np.full((count, 2), -1, np.int64)
        ours: dict[str, float] = {}
        ours["memory_attention"], conditioned = _timed(
            graphs.memory_attention, e2, memory, memory_time, pointers, pointer_time
        )
        ours["decoder"], decoded = _timed(graphs.decode, conditioned, e0, e1, points, labels)
        logits, scores = decoded[0][:, :1], decoded[2]
        ours["memory_encoder"], _ = _timed(graphs.encode_memory, e2, logits, np.zeros(count, bool), scores)
        theirs = _transformers_step(tracker, (e0, e1, e2), memory, memory_time, pointers, pointer_time, logits, scores)
        row = {
            "objects": count,
            **{f"ours/{k}": v for k, v in ours.items()},
            **{f"transformers/{k}": v for k, v in theirs.items()},
        }
        row["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        rows.append(row)
        if len(rows) > 1:
            print(_line(row), flush=True)
    return rows[1:]


def _transformers_step(
    tracker, embeddings, memory, memory_time, pointers, pointer_time, logits, scores
) -> dict[str, float]:
    """transformers' per-frame work for each object in turn (memory attention, decoder), then its batched
    memory encoding: what `Sam3TrackerVideoModel.forward` runs, minus the bookkeeping."""
    import torch
    from transformers.models.sam3_tracker_video.modeling_sam3_tracker_video import get_1d_sine_pe

    e0, e1, e2 = (torch.from_numpy(e) for e in embeddings)
    channels, height, width = e2.shape[1:]
    features = e2.flatten(2).permute(2, 0, 1)
    position = torch.zeros_like(features)
    memory_position = tracker.memory_encoder.position_encoding(
        torch.Size([1, tracker.mem_dim, height, width]), "cpu", torch.float32
    )
    splits = channels // tracker.mem_dim
    seconds = {"memory_attention": 0.0, "decoder": 0.0}
    with torch.inference_mode():
        for index in range(memory.shape[0]):
            slots = [
                torch.from_numpy(memory[index, s]).flatten(1).permute(1, 0)[:, None] for s in range(memory.shape[1])
            ]
            slot_positions = [
                memory_position.flatten(2).permute(2, 0, 1)
                + tracker.memory_temporal_positional_encoding[int(t)].reshape(1, 1, -1)
                for t in memory_time[index]
            ]
            tokens = (
                torch.from_numpy(pointers[index])
                .reshape(-1, 1, splits, tracker.mem_dim)
                .permute(0, 2, 1, 3)
                .flatten(0, 1)
            )
            token_position = tracker.temporal_positional_encoding_projection_layer(
                get_1d_sine_pe(torch.from_numpy(pointer_time[index]), dim=channels)
            )[:, None].repeat_interleave(splits, dim=0)
            started = time.perf_counter()
            conditioned = tracker.memory_attention(
                current_vision_features=features,
                memory=torch.cat([*slots, tokens]),
                current_vision_position_embeddings=position,
                memory_posision_embeddings=torch.cat([*slot_positions, token_position]),
                num_object_pointer_tokens=tokens.shape[0],
            )
            conditioned = conditioned.squeeze(1).transpose(1, 2).reshape(1, channels, height, width)
            seconds["memory_attention"] += time.perf_counter() - started
            started = time.perf_counter()
            tracker._single_frame_forward(image_embeddings=[e0, e1, conditioned], multimask_output=True)
            seconds["decoder"] += time.perf_counter() - started
        high = torch.nn.functional.interpolate(
            torch.from_numpy(logits), size=(tracker.image_size,) * 2, mode="bilinear"
        )
        vision = features.expand(-1, memory.shape[0], -1)
        started = time.perf_counter()
        tracker._encode_new_memory(vision, high, torch.from_numpy(scores)[:, None], is_mask_from_pts=False)
        seconds["memory_encoder"] = time.perf_counter() - started
    return seconds


def _line(row: dict[str, float]) -> str:
    count = row["objects"]
    parts = [f"{int(count)} objects:"]
    for stage in ("memory_attention", "decoder", "memory_encoder"):
        ours, theirs = row[f"ours/{stage}"], row[f"transformers/{stage}"]
        parts.append(f"{stage} {ours / count:.3f} vs {theirs / count:.3f} s/object")
    total_ours = sum(v for k, v in row.items() if k.startswith("ours/")) / count
    total_theirs = sum(v for k, v in row.items() if k.startswith("transformers/")) / count
    parts.append(f"total {total_ours:.3f} vs {total_theirs:.3f} s per object-frame ({total_theirs / total_ours:.2f}x)")
    parts.append(f"peak RSS {row['peak_rss_mb']:.0f} MB")
    return "  ".join(parts)


def long_run(model_dir: Path, frames: int) -> None:
    """Three objects prompted on frame 0 of a synthetic video, propagated to its end; prints the state's size
    (bytes serialised, bytes of arrays) and the process's peak RSS every 100 frames."""
    from sam3_bench.videos import synthetic_video
    from sam3_core.model import Sam3Model
    from sam3_core.predictor import encode
    from sam3_core.tracking import TrackingSession, VideoGraphs, state_to_bytes

    height, width = 120, 160
    video = synthetic_video(frames, width, height)
    model = Sam3Model(model_dir)
    session = TrackingSession(
        VideoGraphs(model_dir), lambda i: encode(model, video[i]), video_size=(height, width), num_frames=frames
    )
    session.add_prompt(0, 1, points=[(0.25 * width, 0.3 * height)])
    session.add_prompt(0, 2, box=(0.45 * width, 0.35 * height, 0.45 * width + 0.2 * height, 0.55 * height))
    session.add_prompt(0, 3, points=[(0.725 * width, 0.75 * height)])
    started = time.perf_counter()
    for result in session.propagate(0):
        if result.frame % 100 == 0 or result.frame == frames - 1:
            arrays = sum(session.state.nbytes_per_object().values())
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
            print(
                f"frame {result.frame:5d}: state {len(state_to_bytes(session.state))} bytes ({arrays} in arrays), "
                f"peak RSS {rss:.0f} MB",
                flush=True,
            )
    print(f"{(time.perf_counter() - started) / frames * 1e3:.1f} ms per frame (3 objects, encoding included)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", type=Path, required=True)
    parser.add_argument("--long", type=int, metavar="FRAMES", help="the long run instead of the comparison")
    parser.add_argument("--config", default="full", help="comparison: the folder's export config")
    parser.add_argument("--seed", type=int, default=0, help="comparison: the folder's export seed")
    parser.add_argument("--objects", type=int, nargs="+", default=[1, 4, 16], help="comparison: objects per frame")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    if args.long:
        long_run(args.model_dir, args.long)
    else:
        measure(args.model_dir, args.config, args.seed, args.objects, args.threads)


if __name__ == "__main__":
    main()
