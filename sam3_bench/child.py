"""Work the benchmark runs in a fresh process, so each result has its own clean peak memory.

    python -m sam3_bench.child encoder '{"model_dir": ..., "variant": ..., "runtime": ..., ...}'
    python -m sam3_bench.child transformers '{"model_dir": ..., ...}'
    python -m sam3_bench.child transformers_concepts '{"model_dir": ..., "image": ..., ...}'

Prints one JSON line with the results.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from sam3_bench.measure import Stats, peak_rss_gb


def encoder(
    model_dir: str,
    variant: str,
    image: str,
    runs: int,
    save_to: str | None,
    threads: int = 0,
    runtime: str = "onnxruntime",
) -> dict:
    """The encoder session alone, as an encoder worker holds it: load, preprocess, run."""
    from sam3_core.embeddings import serialize
    from sam3_core.images import load_image
    from sam3_core.model import RuntimeOptions, Sam3Model
    from sam3_core.predictor import encode
    from sam3_core.timing import StageTimer
    from sam3_serving.store import EMBEDDINGS

    started = time.perf_counter()
    options = RuntimeOptions(intra_op_threads=threads, encoder_runtime=runtime)
    model = Sam3Model(model_dir, variant=variant, load_decoder=False, runtime=options)
    load_seconds = time.perf_counter() - started
    rgb = load_image(image)
    model_ms, preprocess_ms = [], []
    for _ in range(runs):
        timer = StageTimer()
        embeddings = encode(model, rgb, timer)
        model_ms.append(timer.milliseconds["model"])
        preprocess_ms.append(timer.milliseconds["preprocess"])
    if save_to:
        Path(save_to).write_bytes(serialize(EMBEDDINGS.stored(embeddings, model.model_id, Path(image).name)))
    return {
        "variant": variant,
        "runtime": runtime,
        "model_id": model.model_id,
        "load_seconds": round(load_seconds, 2),
        "model": Stats.of(model_ms).as_dict(),
        "preprocess": Stats.of(preprocess_ms).as_dict(),
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


def transformers(
    model_dir: str,
    images: dict[str, str],
    prompts: dict[str, dict[str, list[dict]]],
    encoder_runs: int,
    prompt_runs: int,
) -> dict:
    """What transformers users have: Sam3TrackerProcessor + Sam3TrackerModel (eager) + post_process_masks,
    on the embeddings SAM3 computes (`tracker_graphs.image_embeddings`: the same cost as `get_image_embeddings`)."""
    import torch
    from PIL import Image
    from transformers import Sam3ImageProcessor, Sam3TrackerProcessor

    from sam3_export import tracker_graphs, weights

    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    source = manifest["source"]
    if "checkpoint" in source:
        model = weights.build_tracker(checkpoint=Path(source["checkpoint"]), config="full", seed=0)
    else:
        model = weights.build_tracker(checkpoint=None, config=source["config"], seed=source["seed"])
    processor = Sam3TrackerProcessor(image_processor=Sam3ImageProcessor())
    torch.set_grad_enabled(False)
    result: dict[str, Any] = {"torch": torch.__version__, "threads": torch.get_num_threads(), "prompts": {}}
    for position, (size_name, path) in enumerate(images.items()):
        image = Image.open(path).convert("RGB")
        encoder_ms = []
        for _ in range(encoder_runs if position == 0 else 1):  # the encoder's cost hardly depends on size
            started = time.perf_counter()
            inputs = processor(images=image, return_tensors="pt")
            embeddings = tracker_graphs.image_embeddings(model, inputs["pixel_values"])
            encoder_ms.append((time.perf_counter() - started) * 1000)
        result[f"encoder_{size_name}"] = Stats.of(encoder_ms).as_dict()
        for prompt_name, objects in prompts[size_name].items():
            kwargs: dict[str, Any] = {"original_sizes": inputs["original_sizes"], "return_tensors": "pt"}
            if any("points" in o for o in objects):
                kwargs["input_points"] = [[o["points"] for o in objects]]
                kwargs["input_labels"] = [[o["labels"] for o in objects]]
            if any("box" in o for o in objects):
                kwargs["input_boxes"] = [[o["box"] for o in objects]]
            samples = []
            for _ in range(prompt_runs + 1):
                started = time.perf_counter()
                prompt_inputs = processor(**kwargs)
                prompt_inputs.pop("original_sizes")
                outputs = model(image_embeddings=embeddings, multimask_output=True, **prompt_inputs)
                processor.post_process_masks(outputs.pred_masks, inputs["original_sizes"])
                samples.append((time.perf_counter() - started) * 1000)
            result["prompts"][f"{prompt_name}@{size_name}"] = Stats.of(samples[1:]).as_dict()
    result["peak_rss_gb"] = round(peak_rss_gb(), 3)
    return result


def transformers_concepts(model_dir: str, image: str, phrase: str, runs: int) -> dict:
    """What a transformers user runs for a phrase: Sam3Processor + Sam3Model (eager) +
    post_process_instance_segmentation, on vision features computed once (as our decoders keep them)."""
    import torch
    from PIL import Image
    from transformers import CLIPTokenizer, Sam3ImageProcessor, Sam3Processor

    from sam3_export import weights

    source = json.loads((Path(model_dir) / "manifest.json").read_text())["source"]
    checkpoint = Path(source["checkpoint"]) if "checkpoint" in source else None
    video = weights.build_video_model(
        checkpoint=checkpoint, config=source.get("config", "full"), seed=source.get("seed", 0)
    )
    detector = video.detector_model.eval()
    del video
    processor = Sam3Processor(image_processor=Sam3ImageProcessor(), tokenizer=CLIPTokenizer.from_pretrained(model_dir))
    torch.set_grad_enabled(False)
    picture = Image.open(image).convert("RGB")
    started = time.perf_counter()
    inputs = processor(images=picture, return_tensors="pt")
    vision = detector.get_vision_features(inputs["pixel_values"])
    vision_ms = (time.perf_counter() - started) * 1000
    samples, found = [], 0
    for _ in range(runs + 1):
        started = time.perf_counter()
        text = processor(text=phrase, return_tensors="pt")
        outputs = detector(vision_embeds=vision, input_ids=text["input_ids"], attention_mask=text["attention_mask"])
        (result,) = processor.post_process_instance_segmentation(
            outputs, threshold=0.5, mask_threshold=0.5, target_sizes=[picture.size[::-1]]
        )
        samples.append((time.perf_counter() - started) * 1000)
        found = len(result["scores"])
    return {
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "vision_features_ms": round(vision_ms, 1),
        "query_ms": Stats.of(samples[1:]).as_dict(),  # text encoder + detector + post-processing
        "instances": found,
        "peak_rss_gb": round(peak_rss_gb(), 3),
    }


TASKS = {"encoder": encoder, "transformers": transformers, "transformers_concepts": transformers_concepts}

if __name__ == "__main__":
    task, arguments = sys.argv[1], json.loads(sys.argv[2])
    print(json.dumps(TASKS[task](**arguments)), flush=True)
