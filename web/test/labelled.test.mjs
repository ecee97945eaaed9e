import assert from "node:assert/strict";
import { test } from "node:test";

import { parseCsv, readLabelledCsv } from "../src/labelled.js";

test("quoted fields keep commas, newlines and doubled quotes; CRLF and a BOM are fine", () => {
  const data = readLabelledCsv('\uFEFFtext,label\r\n"a, ""quoted""\nline",pos\r\nplain,neg\r\n');
  assert.deepEqual(data.texts, ['a, "quoted"\nline', "plain"]);
  assert.deepEqual(data.labelNames, ["neg", "pos"]);
  assert.deepEqual(data.labels, [1, 0]);
  assert.deepEqual(parseCsv("a,b\n1,2").map(([, r]) => r), [["a", "b"], ["1", "2"]]);
});

test("whole-number labels are one class however written, sorted before names", () => {
  const data = readLabelledCsv("label,text\n1.0,x\n+1,y\n01,z\n0,w\nzeta,v\n");
  assert.deepEqual(data.labelNames, ["0", "1", "zeta"]);
  assert.deepEqual(data.labels, [1, 1, 1, 0, 2]);
});

test("bad CSVs are refused with the line and the fix", () => {
  assert.throws(() => readLabelledCsv("text,category\na,b\nc,d\n"), /the header must name columns 'text' and 'label'/);
  assert.throws(() => readLabelledCsv("text,label\na,pos\nb,pos\n"), /all examples have the same label \("pos"\); a classifier needs at least two classes/);
  assert.throws(() => readLabelledCsv("text,label\n,pos\nb,neg\n"), /line 2: field 'text' is empty/);
  assert.throws(() => readLabelledCsv("text,label\na,pos\n"), /1 example\(s\)/);
  assert.throws(() => readLabelledCsv('text,label\n"open,pos\n'), /not closed/);
  assert.throws(() => readLabelledCsv("   "), /holds no examples/);
});
