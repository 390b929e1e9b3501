// A sam3.v1 client as a Node.js service would write it: @grpc/grpc-js, the protos loaded at run time,
// masks decoded here (RLE, packed bits), errors read from the standard grpc-status-details-bin.
//
//   node wire_client.js < spec.json > results.json
//
// spec: {target, protoRoot, image (path), cases: [{objects: [{points: [[x, y, label]], box}], selection,
// mask_index}]} with enum names as in the protos. tests/test_node_client.py writes the spec, runs the
// same requests through the Python SDK and compares every mask and score bit for bit. This script
// checks what only it can see (JavaScript types, its own decoders agreeing) and fails loudly.
"use strict";

const assert = require("node:assert/strict");
const crypto = require("node:crypto");
const fs = require("node:fs");
const path = require("node:path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");
const protobuf = require("protobufjs");
const googleProtos = require("google-proto-files");

const FORMATS = ["MASK_FORMAT_PNG", "MASK_FORMAT_RLE", "MASK_FORMAT_PACKED_BITS", "MASK_FORMAT_NONE"];

// ------------------------------------------------------------------ protos and stubs

function loadServices(protoRoot, target) {
  // Default `longs` on purpose: a 64-bit field would arrive as a Long object and the checks below catch it.
  const definition = protoLoader.loadSync(["sam3/v1/encoder.proto", "sam3/v1/decoder.proto"], {
    includeDirs: [protoRoot],
    keepCase: true,
    enums: String,
    defaults: true,
    oneofs: true,
  });
  const { sam3 } = grpc.loadPackageDefinition(definition);
  const credentials = grpc.credentials.createInsecure();
  return {
    encoder: new sam3.v1.EncoderService(target, credentials),
    decoder: new sam3.v1.DecoderService(target, credentials),
  };
}

function unary(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 60_000 }, (error, response) =>
      error ? reject(error) : resolve(response),
    );
  });
}

// ------------------------------------------------------------------ the standard rich error model

const richErrors = new protobuf.Root();
richErrors.resolvePath = (_origin, target) => path.join(googleProtos.getProtoPath(), "..", target);
richErrors.loadSync(["google/rpc/status.proto", "google/rpc/error_details.proto"], { keepCase: true });
richErrors.resolveAll();
const Status = richErrors.lookupType("google.rpc.Status");

// google.rpc.Status from a failed call's trailers, with its Any details unpacked by type URL.
function richStatus(error) {
  const [bytes] = error.metadata.get("grpc-status-details-bin");
  assert.ok(bytes, `no grpc-status-details-bin on ${error.code} ${error.details}`);
  const status = Status.toObject(Status.decode(bytes), { defaults: true });
  const details = status.details.map((any) => {
    const type = richErrors.lookupType(any.type_url.slice(any.type_url.lastIndexOf("/") + 1));
    return { type: type.fullName.slice(1), ...type.toObject(type.decode(any.value), { defaults: true }) };
  });
  assert.equal(status.code, error.code, "google.rpc.Status.code must equal the call's status code");
  return { code: status.code, message: status.message, details };
}

// ------------------------------------------------------------------ masks

// COCO uncompressed RLE: runs over the column-major mask, background first -> row-major 0/1 bytes.
function fromRle(rle) {
  const { height, width } = rle;
  const mask = new Uint8Array(height * width);
  let position = 0;
  rle.counts.forEach((count, run) => {
    if (run % 2 === 1) {
      for (let k = position; k < position + count; k++) mask[(k % height) * width + Math.floor(k / height)] = 1;
    }
    position += count;
  });
  assert.equal(position, height * width, "RLE counts must sum to height * width");
  return mask;
}

// One bit per pixel, row-major, most significant bit first -> row-major 0/1 bytes.
function fromPackedBits(data, height, width) {
  assert.equal(data.length, Math.ceil((height * width) / 8), "packed bits: ceil(h * w / 8) bytes");
  const mask = new Uint8Array(height * width);
  for (let i = 0; i < mask.length; i++) mask[i] = (data[i >> 3] >> (7 - (i & 7))) & 1;
  return mask;
}

// COCO xywh box of the object pixels, and their count.
function measure(mask, height, width) {
  let area = 0;
  let [x0, y0, x1, y1] = [width, height, -1, -1];
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      if (!mask[y * width + x]) continue;
      area++;
      x0 = Math.min(x0, x);
      y0 = Math.min(y0, y);
      x1 = Math.max(x1, x);
      y1 = Math.max(y1, y);
    }
  }
  return { area, bbox: area ? [x0, y0, x1 - x0 + 1, y1 - y0 + 1] : [0, 0, 0, 0] };
}

function describeMask(mask, response) {
  // The things a JavaScript caller must get as plain numbers (no Long, no string).
  for (const value of [mask.area, mask.width, mask.height, mask.index, mask.iou_score]) {
    assert.equal(typeof value, "number", `Mask fields must be numbers in JavaScript, got ${typeof value}`);
  }
  assert.ok(mask.bbox, "Mask.bbox is always present");
  assert.deepEqual([mask.width, mask.height], [response.width, response.height], "Mask size = image size");
  const out = {
    format: mask.format,
    index: mask.index,
    iou_score: mask.iou_score,
    area: mask.area,
    bbox: [mask.bbox.x, mask.bbox.y, mask.bbox.width, mask.bbox.height],
  };
  let pixels = null;
  if (mask.format === "MASK_FORMAT_RLE") {
    assert.deepEqual([mask.rle.height, mask.rle.width], [mask.height, mask.width]);
    pixels = fromRle(mask.rle);
  } else if (mask.format === "MASK_FORMAT_PACKED_BITS") {
    pixels = fromPackedBits(mask.data, mask.height, mask.width);
  } else if (mask.format === "MASK_FORMAT_PNG") {
    out.png = mask.data.toString("base64"); // decoded by the Python side
  } else {
    assert.equal(mask.payload, undefined, "MASK_FORMAT_NONE has no payload");
    assert.deepEqual(out.bbox, [0, 0, 0, 0]);
    assert.equal(mask.area, 0);
  }
  if (pixels) {
    const { area, bbox } = measure(pixels, mask.height, mask.width);
    assert.equal(area, mask.area, "the server's area = the object pixels decoded here");
    assert.deepEqual(bbox, out.bbox, "the server's bbox = the box of the pixels decoded here");
    out.sha256 = crypto.createHash("sha256").update(pixels).digest("hex");
  }
  return out;
}

function describeResponse(response) {
  if (response.error) return { request_id: response.request_id, error: response.error };
  return {
    request_id: response.request_id,
    width: response.width,
    height: response.height,
    objects: response.objects.map((object) => ({
      iou_scores: object.iou_scores,
      best_index: object.best_index,
      presence_probability: object.presence_probability,
      presence_logit: object.presence_logit,
      masks: object.masks.map((mask) => describeMask(mask, response)),
    })),
  };
}

// ------------------------------------------------------------------ requests

function segmentRequest(imageId, testCase, maskFormat, requestId = "") {
  return {
    image_id: imageId,
    objects: testCase.objects.map(({ points, box }) => ({
      points: points.map(([x, y, label]) => ({ x, y, label })),
      ...(box ? { box: { x1: box[0], y1: box[1], x2: box[2], y2: box[3] } } : {}),
    })),
    selection: testCase.selection,
    mask_index: testCase.mask_index ?? 0,
    mask_format: maskFormat,
    request_id: requestId,
  };
}

function segmentStream(decoder, requests) {
  return new Promise((resolve, reject) => {
    const call = decoder.SegmentStream({ deadline: Date.now() + 120_000 });
    const responses = [];
    call.on("data", (response) => responses.push(response));
    call.on("error", reject);
    call.on("end", () => resolve(responses));
    for (const request of requests) call.write(request);
    call.end();
  });
}

async function expectError(promise) {
  try {
    await promise;
  } catch (error) {
    return { code: error.code, details: error.details, status: richStatus(error) };
  }
  throw new Error("the call was expected to fail");
}

async function main() {
  const spec = JSON.parse(fs.readFileSync(0, "utf8"));
  const { encoder, decoder } = loadServices(spec.protoRoot, spec.target);
  const image = fs.readFileSync(spec.image);

  const encoded = await unary(encoder, "Encode", { image });
  assert.equal(encoded.image_id, crypto.createHash("sha256").update(image).digest("hex"), "image id = sha256");
  const info = await unary(decoder, "GetModelInfo", {});
  for (const tensor of info.embeddings) assert.ok(tensor.shape.every((d) => typeof d === "number"));

  const segments = [];
  for (const testCase of spec.cases) {
    const byFormat = {};
    for (const format of FORMATS) {
      byFormat[format] = describeResponse(await unary(decoder, "Segment", segmentRequest(encoded.image_id, testCase, format)));
    }
    // The two formats decoded here agree pixel for pixel (PNG is checked on the Python side).
    byFormat.MASK_FORMAT_RLE.objects.forEach((object, i) =>
      object.masks.forEach((mask, j) =>
        assert.equal(mask.sha256, byFormat.MASK_FORMAT_PACKED_BITS.objects[i].masks[j].sha256, "RLE = bits"),
      ),
    );
    segments.push(byFormat);
  }

  const streamed = await segmentStream(decoder, [
    ...spec.cases.map((testCase, i) => segmentRequest(encoded.image_id, testCase, "MASK_FORMAT_RLE", String(i))),
    segmentRequest("0".repeat(64), spec.cases[0], "MASK_FORMAT_RLE", "missing"),
  ]);

  const oneClick = { objects: [{ points: [[10, 10, "POINT_LABEL_FOREGROUND"]] }], selection: "MASK_SELECTION_BEST" };
  const errors = {
    not_found: await expectError(unary(decoder, "Segment", segmentRequest("0".repeat(64), oneClick, "MASK_FORMAT_RLE"))),
    // SAM's numeric background label, sent as is: 0 is "not set", refused rather than read as foreground.
    label_zero: await expectError(
      unary(decoder, "Segment", segmentRequest(encoded.image_id, { ...oneClick, objects: [{ points: [[10, 10, 0]] }] }, "MASK_FORMAT_RLE")),
    ),
    // A misspelt enum name: protobufjs drops it and sends 0.
    misspelt_format: await expectError(
      unary(decoder, "Segment", segmentRequest(encoded.image_id, oneClick, "MASK_FORMAT_RLEE")),
    ),
  };
  encoder.close();
  decoder.close();
  process.stdout.write(JSON.stringify({ image_id: encoded.image_id, segments, stream: streamed.map(describeResponse), errors }));
}

main().catch((error) => {
  console.error(error && error.stack ? error.stack : error);
  process.exit(1);
});
