"use strict";
const $ = (id) => document.getElementById(id);
const status = (text, state) => { $("status").textContent = text; $("status").dataset.state = state; };
const COLOURS = { own: "#ff8c00", partner: "#1e90ff" };

async function api(path, body) {
  const headers = { "Accept": "application/json" };
  const key = $("api-key").value.trim();
  if (key) headers["X-API-Key"] = key;
  const init = { headers };
  if (body !== undefined) {
    init.method = "POST";
    headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const response = await fetch(path, init);
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const detail = data && Array.isArray(data.detail) ? data.detail.map((d) => d.msg).join("; ") : response.statusText;
    throw new Error(`${response.status}: ${detail}`);
  }
  return data;
}

function fill(select, names) {
  select.replaceChildren(...names.map((name) => new Option(name, name)));
}

let categoryNames = {};

async function loadCatalog() {
  try {
    const [datasets, recipes] = await Promise.all([api("/v1/datasets"), api("/v1/recipes")]);
    fill($("dataset"), datasets.map((d) => d.name));
    fill($("recipe"), recipes.map((r) => r.name));
    if ([...$("recipe").options].some((o) => o.value === "deit")) $("recipe").value = "deit";
    categoryNames = Object.fromEntries(datasets.map((d) => [d.name, Object.fromEntries(d.categories.map((c) => [c.id, c.name]))]));
    status("Ready: pick a dataset and a recipe, then Mix.", "ready");
  } catch (error) {
    status(`Could not load the catalog (${error.message}). An API key may be needed.`, "error");
  }
}

function loadImage(image) {
  return new Promise((resolve, reject) => {
    const element = new Image();
    element.onload = () => resolve(element);
    element.onerror = () => reject(new Error(`image ${image.id} did not decode`));
    element.src = `data:image/${image.format};base64,${image.data}`;
  });
}

async function draw(image, annotations, names) {
  const element = await loadImage(image);
  const canvas = document.createElement("canvas");
  canvas.width = image.width;
  canvas.height = image.height;
  canvas.className = "mixed";
  canvas.dataset.imageId = image.id;
  canvas.dataset.boxes = annotations.filter((ann) => !ann.iscrowd).length;
  canvas.dataset.crowd = annotations.filter((ann) => ann.iscrowd).length;
  const ctx = canvas.getContext("2d");
  ctx.drawImage(element, 0, 0);
  const params = image.mix.params;
  const outline = params.cut_box ?? params.paste_box;  // the cut, or ResizeMix's paste box
  if (outline) {
    const [x1, y1, x2, y2] = outline;
    ctx.setLineDash([4, 3]); ctx.strokeStyle = "#fff"; ctx.lineWidth = 1;
    ctx.strokeRect(x1 + 0.5, y1 + 0.5, x2 - x1 - 1, y2 - y1 - 1);
    ctx.setLineDash([]);
  }
  ctx.font = "11px sans-serif";
  for (const ann of annotations) {
    const [x, y, w, h] = ann.bbox;
    const colour = ann.source_image_id === image.id ? COLOURS.own : COLOURS.partner;
    ctx.strokeStyle = colour; ctx.lineWidth = 2;
    if (ann.iscrowd) ctx.setLineDash([6, 4]);  // a crowd region: ignored, never a target
    ctx.strokeRect(x, y, w, h);
    ctx.setLineDash([]);
    const weight = ann.iscrowd ? "crowd" : ann.mix_weight.toFixed(2);
    const text = `${names[ann.category_id] ?? ann.category_id} ${weight}`;
    const width = ctx.measureText(text).width + 4;
    ctx.fillStyle = colour; ctx.fillRect(x, Math.max(y - 13, 0), width, 13);
    ctx.fillStyle = "#000"; ctx.fillText(text, x + 2, Math.max(y - 3, 10));
  }
  const figure = document.createElement("figure");
  const caption = document.createElement("figcaption");
  const lam = params.mode === "none" ? "not mixed" : `${params.mode} lam=${params.lam.toFixed(2)}`;
  caption.textContent = `image ${image.id} + ${image.mix.partner_id}: ${lam}, ${canvas.dataset.boxes} boxes`;
  figure.append(canvas, caption);
  return figure;
}

async function mix(event) {
  event.preventDefault();
  const dataset = $("dataset").value;
  const body = {
    batch_size: Number($("batch-size").value),
    seed: Number($("seed").value),
    recipe: $("recipe").value,
  };
  $("mix").disabled = true;
  status("Mixing…", "busy");
  try {
    const answer = await api(`/v1/datasets/${encodeURIComponent(dataset)}/batch`, body);
    const byImage = new Map(answer.images.map((image) => [image.id, []]));
    for (const ann of answer.annotations) byImage.get(ann.image_id).push(ann);
    const figures = await Promise.all(answer.images.map((image) => draw(image, byImage.get(image.id), categoryNames[dataset] || {})));
    $("results").replaceChildren(...figures);
    status(`Mixed ${answer.images.length} images (seed ${answer.seed}): ${answer.annotations.filter((ann) => !ann.iscrowd).length} boxes kept, ${answer.dropped.length} dropped.`, "done");
  } catch (error) {
    $("results").replaceChildren();  // the previous batch's images are not this request's answer
    status(`Mixing failed: ${error.message}`, "error");
  } finally {
    $("mix").disabled = false;
  }
}

$("controls").addEventListener("submit", mix);
loadCatalog();
