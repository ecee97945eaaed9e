// The live loss plot: a canvas redrawn after every training step (no chart library to ship).

export function drawLoss(canvas, losses, total) {
  const ctx = canvas.getContext("2d");
  const { width: w, height: h } = canvas;
  const pad = 34;
  ctx.clearRect(0, 0, w, h);
  ctx.fillStyle = "#fff";
  ctx.fillRect(0, 0, w, h);
  ctx.strokeStyle = "#999";
  ctx.strokeRect(pad, 8, w - pad - 8, h - pad);
  if (!losses.length) return;
  const max = Math.max(...losses) * 1.05 || 1;
  const x = (i) => pad + ((w - pad - 8) * i) / Math.max(1, total - 1);
  const y = (v) => 8 + (h - pad) * (1 - v / max);
  ctx.fillStyle = "#333";
  ctx.font = "11px sans-serif";
  ctx.fillText(max.toFixed(2), 2, 16);
  ctx.fillText("0", 2, h - pad + 8);
  ctx.fillText(`step ${losses.length}/${total}`, pad + 4, h - 10);
  ctx.fillText(`loss ${losses.at(-1).toFixed(4)}`, w - 110, h - 10);
  ctx.strokeStyle = "#1f6feb";
  ctx.lineWidth = 2;
  ctx.beginPath();
  losses.forEach((v, i) => (i ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v))));
  ctx.stroke();
}
