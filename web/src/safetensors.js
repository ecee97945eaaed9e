// safetensors read/write: an 8-byte little-endian header length, a JSON header, then raw little-endian data.
// Why here: a task trained in the page must be a file the Python runtime loads unchanged (task.py).

const DTYPES = {
  F32: Float32Array,
  F64: Float64Array,
  I32: Int32Array,
  I64: BigInt64Array,
  U8: Uint8Array,
  I8: Int8Array,
};

function fail(where, why) {
  return new Error(`${where}: ${why}; the file is not a valid safetensors file: re-create or re-download it.`);
}

/** Parse safetensors bytes -> { tensors: {name: {dtype, shape, data}}, metadata: {string: string} }. */
export function readSafetensors(bytes, where = "safetensors file") {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  if (buf.byteLength < 8) throw fail(where, `only ${buf.byteLength} bytes`);
  const view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const headerLen = Number(view.getBigUint64(0, true));
  if (headerLen > buf.byteLength - 8 || headerLen > 100_000_000) throw fail(where, `header length ${headerLen} is past the end`);
  let header;
  try {
    header = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(buf.subarray(8, 8 + headerLen)));
  } catch (exc) {
    throw fail(where, `the header is not JSON (${exc.message})`);
  }
  if (header === null || typeof header !== "object" || Array.isArray(header)) throw fail(where, "the header is not an object");
  const dataStart = 8 + headerLen;
  const dataLen = buf.byteLength - dataStart;
  const metadata = header.__metadata__ ?? {};
  const tensors = {};
  for (const [name, info] of Object.entries(header)) {
    if (name === "__metadata__") continue;
    const Ctor = DTYPES[info?.dtype];
    if (!Ctor) throw fail(where, `tensor ${name} has unsupported dtype ${JSON.stringify(info?.dtype)}`);
    const shape = info.shape;
    const [begin, end] = info.data_offsets ?? [];
    if (!Array.isArray(shape) || !shape.every((d) => Number.isInteger(d) && d >= 0)) throw fail(where, `tensor ${name} has a bad shape`);
    const count = shape.reduce((a, b) => a * b, 1);
    if (!Number.isInteger(begin) || !Number.isInteger(end) || begin < 0 || end > dataLen || end - begin !== count * Ctor.BYTES_PER_ELEMENT) {
      throw fail(where, `tensor ${name}'s data_offsets [${begin}, ${end}] do not fit its shape or the file`);
    }
    // Copy: the data may not be aligned for the typed array.
    const raw = buf.slice(dataStart + begin, dataStart + end);
    tensors[name] = { dtype: info.dtype, shape, data: new Ctor(raw.buffer, 0, count) };
  }
  return { tensors, metadata };
}

function dtypeOf(data) {
  for (const [name, Ctor] of Object.entries(DTYPES)) if (data instanceof Ctor) return name;
  throw new Error(`cannot store a ${data?.constructor?.name} in safetensors`);
}

/** Serialize {name: {shape, data: TypedArray}} + string metadata; tensors in name order, header padded to 8. */
export function writeSafetensors(tensors, metadata = {}) {
  const names = Object.keys(tensors).sort();
  const header = {};
  let offset = 0;
  for (const name of names) {
    const { shape, data } = tensors[name];
    const count = shape.reduce((a, b) => a * b, 1);
    if (count !== data.length) throw new Error(`tensor ${name}: shape [${shape}] holds ${count} values, data has ${data.length}`);
    header[name] = { dtype: dtypeOf(data), shape: [...shape], data_offsets: [offset, offset + data.byteLength] };
    offset += data.byteLength;
  }
  for (const [k, v] of Object.entries(metadata)) {
    if (typeof v !== "string") throw new Error(`safetensors metadata ${k} must be a string`);
  }
  const withMeta = Object.keys(metadata).length ? { __metadata__: metadata, ...header } : header;
  let json = new TextEncoder().encode(JSON.stringify(withMeta));
  const pad = (8 - (json.byteLength % 8)) % 8;
  if (pad) json = new TextEncoder().encode(JSON.stringify(withMeta) + " ".repeat(pad));
  const out = new Uint8Array(8 + json.byteLength + offset);
  new DataView(out.buffer).setBigUint64(0, BigInt(json.byteLength), true);
  out.set(json, 8);
  let pos = 8 + json.byteLength;
  for (const name of names) {
    const { data } = tensors[name];
    out.set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength), pos);
    pos += data.byteLength;
  }
  return out;
}
