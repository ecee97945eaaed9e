// Labelled texts from pasted or uploaded CSV, with labelled_file.py's rules: a header naming `text` and `label`,
// whole-number labels as one class however written (1, 1.0, 01, +1), names stripped, numbers before names.
// Every problem names the line and the fix, so the page can show it before anything is trained or stored.

const WHOLE_NUMBER = /^[+-]?[0-9]{1,30}(?:\.0*)?$/;

/** RFC 4180 records: quoted fields may hold separators, newlines and doubled quotes. [lineNumber, fields][] */
export function parseCsv(text, separator = ",") {
  const records = [];
  let record = [];
  let field = "";
  let quoted = false;
  let line = 1;
  let start = 1;
  let fieldStarted = false;
  for (let i = 0; i < text.length; i++) {
    const c = text[i];
    if (quoted) {
      if (c === '"' && text[i + 1] === '"') {
        field += '"';
        i++;
      } else if (c === '"') quoted = false;
      else {
        if (c === "\n") line++;
        field += c;
      }
    } else if (c === '"' && !fieldStarted) {
      quoted = true;
      fieldStarted = true;
    } else if (c === separator) {
      record.push(field);
      field = "";
      fieldStarted = false;
    } else if (c === "\r" && text[i + 1] === "\n") {
      // the \n ends the record
    } else if (c === "\n") {
      record.push(field);
      records.push([start, record]);
      record = [];
      field = "";
      fieldStarted = false;
      line++;
      start = line;
    } else {
      field += c;
      fieldStarted = true;
    }
  }
  if (quoted) throw new Error(`line ${start}: a quoted field is not closed; close the quote ("").`);
  if (fieldStarted || field || record.length) {
    record.push(field);
    records.push([start, record]);
  }
  return records.filter(([, r]) => !(r.length === 1 && r[0].trim() === ""));
}

export function canonicalLabel(label) {
  const text = String(label).trim();
  return WHOLE_NUMBER.test(text) ? String(BigInt(text.split(".")[0])) : text;
}

function sortKey(a, b) {
  const na = WHOLE_NUMBER.test(a), nb = WHOLE_NUMBER.test(b);
  if (na && nb) return Number(BigInt(a) - BigInt(b) > 0n) - Number(BigInt(a) - BigInt(b) < 0n);
  if (na !== nb) return na ? -1 : 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

/** CSV text -> {texts, labels (indices), labelNames}; throws a message naming `where`, the line and the fix. */
export function readLabelledCsv(content, where = "the CSV") {
  const text = content.replace(/^\uFEFF/, "");
  if (!text.trim()) throw new Error(`${where} holds no examples; paste a header line "text,label" and at least two labelled texts.`);
  const separator = !text.split("\n", 1)[0].includes(",") && text.split("\n", 1)[0].includes("\t") ? "\t" : ",";
  const records = parseCsv(text, separator);
  const [, header] = records[0];
  const names = header.map((h) => h.trim());
  const ti = names.indexOf("text"), li = names.indexOf("label");
  if (ti < 0 || li < 0) {
    throw new Error(
      `${where}: the header must name columns 'text' and 'label' (found ${JSON.stringify(names.slice(0, 10))}). ` +
        `Add a first line "text,label".`,
    );
  }
  const texts = [], raw = [];
  for (const [line, fields] of records.slice(1)) {
    if (fields.length <= Math.max(ti, li)) throw new Error(`${where}, line ${line}: the row has fewer fields than the header; give text and label.`);
    const t = fields[ti].trim(), l = canonicalLabel(fields[li]);
    if (!t) throw new Error(`${where}, line ${line}: field 'text' is empty.`);
    if (!l) throw new Error(`${where}, line ${line}: field 'label' is empty.`);
    texts.push(t);
    raw.push(l);
  }
  if (texts.length < 2) throw new Error(`${where} has ${texts.length} example(s); give at least two labelled texts.`);
  const labelNames = [...new Set(raw)].sort(sortKey);
  if (labelNames.length < 2) {
    throw new Error(`${where}: all examples have the same label (${JSON.stringify(labelNames[0])}); a classifier needs at least two classes.`);
  }
  const index = new Map(labelNames.map((n, i) => [n, i]));
  return { texts, labels: raw.map((l) => index.get(l)), labelNames };
}
