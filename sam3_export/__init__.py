"""Build tooling: SAM3 in torch -> the ONNX model folders `sam3_core` serves (needs the `export` extra).

Nothing that serves requests imports this package: `sam3 models export`, the benchmark's transformers
oracle and tests/fixtures/generate.py do, each lazily. It reads the folder contract (file and tensor
names) from `sam3_core.graphs`, so exporter and runtime cannot disagree. `pipeline.run` writes a folder
for one `tracker.TrackerExport` (the onnx-community layout: clicks and boxes) or `concept.ConceptExport`
(the same graphs plus concept prompts, from one encode).
"""
