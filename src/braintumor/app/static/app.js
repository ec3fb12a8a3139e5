// The page of `braintumor app`: sends each dropped file to POST /api/scans (its bytes as the body, one at a
// time), shows each answer, and keeps every row for the CSV download. File names stay in this page: the server
// never sees them. Text from files and answers is set with textContent, never parsed as HTML.
"use strict";

const state = { facts: null, header: null, rows: [] };  // rows: {name, line, cells} in the order they came
const $ = (selector, root = document) => root.querySelector(selector);

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

const fixed = (value, digits = 3) => (value === null || value === undefined ? "" : value.toFixed(digits));

async function loadFacts() {
  const response = await fetch("/api/model");
  const facts = await response.json();
  state.facts = facts;
  const model = $("#model");
  model.textContent = "";
  const version = facts.version ? ` version ${facts.version}` : " (a model file, not a registered version)";
  const aliases = facts.aliases.length ? " " + facts.aliases.map((a) => "@" + a).join(" ") : "";
  model.append(element("span", { class: "fact" }, "Model ", element("strong", { text: facts.name }),
    version + aliases));
  model.append(element("span", { class: "fact", text: `trained ${facts.trained} (${facts.trained_note})` }));
  model.append(element("span", { class: "fact" }, "data ",
    element("code", { text: facts.data_hash || "hash unknown (not in a model file)" })));
  if (facts.has_card) {
    model.append(element("span", { class: "fact" }, element("a", { href: "/model-card", text: "model card" })));
  } else {
    model.append(element("span", { class: "fact", text: "no model card" }));
  }
  $("#disclaimer").textContent = facts.disclaimer;
  $("#where").textContent = location.host;
}

// ---- sending files ----------------------------------------------------------------------------------------

let queue = Promise.resolve();
let pending = 0;

function addFiles(files) {
  for (const file of files) {
    pending += 1;
    queue = queue.then(() => answerFile(file)).finally(() => {
      pending -= 1;
      $("#status").textContent = pending ? `Answering… ${pending} file(s) to go` : "All files answered.";
    });
  }
  if (files.length) $("#status").textContent = `Answering… ${pending} file(s) to go`;
}

function sizeProblem(size) {  // the server's (predict's) words, said before a byte is sent
  const limit = state.facts.max_file_bytes;
  if (size <= limit) return null;
  const n = (x) => x.toLocaleString("en-US");
  return `${n(size)} bytes is over the limit data.max_file_bytes=${n(limit)}; raise the limit if the scan is real`;
}

async function answerFile(file) {
  let answer;
  const tooLarge = sizeProblem(file.size);
  if (tooLarge) {
    answer = { problem: tooLarge };
  } else {
    try {
      const response = await fetch("/api/scans", {
        method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" },
      });
      answer = await response.json();
    } catch (error) {
      answer = { problem: `no answer from the server (${error.message}); is braintumor app still running?` };
    }
  }
  const card = answer.problem ? problemCard(file.name, answer.problem) : scanCard(file.name, answer);
  $("#scans").append(card);
  if (!answer.problem) addRows(file.name, answer);
}

function problemCard(name, problem) {
  return element("article", { class: "scan problem", "aria-label": name },
    element("h3", { text: name }),
    element("p", { class: "reason" }, element("strong", { text: "Cannot be used: " }), problem));
}

// ---- one scan ---------------------------------------------------------------------------------------------

function scanCard(name, answer) {
  const card = element("article", { class: "scan", "aria-label": name });
  card.append(element("h3", { text: name }), element("p", { class: "description", text: answer.description }));
  const picture = element("img", { class: "picture", alt: "" });
  const heat = element("img", { class: "heat", alt: "", "aria-hidden": "true" });
  const figure = element("figure", { class: "view", tabindex: "0" }, picture, heat);
  const result = element("div", { class: "answer" });
  card.append(element("div", { class: "body" }, figure, result));

  const word = answer.volume ? "slice" : "frame";
  const count = answer.pictures.length;
  let index = answer.volume ? Math.floor((count - 1) / 2) : 0;
  let slider = null;
  const position = element("output", { class: "position" });

  const toggle = element("input", { type: "checkbox", class: "cam-toggle", checked: "" });
  const opacity = element("input", { type: "range", class: "cam-opacity", min: "0", max: "1", step: "0.05",
    value: "0.45" });
  const camControls = element("div", { class: "controls" },
    element("label", {}, toggle, " Grad-CAM overlay"),
    element("label", {}, "opacity ", opacity));

  function show() {
    const row = answer.pictures[index];
    const what = answer.several ? `${word} ${row.frame}` : "the scan";
    picture.src = `/api/scans/${answer.scan}/${index}/picture.png`;
    picture.alt = `${what} as the network sees it (after head crop and intensity window)`;
    heat.hidden = !toggle.checked;
    if (toggle.checked) heat.src = `/api/scans/${answer.scan}/${index}/gradcam.png`;
    heat.style.opacity = opacity.value;
    result.replaceChildren(pictureAnswer(row, answer.several ? `${word[0].toUpperCase()}${word.slice(1)} ${row.frame}` : null));
    if (slider) {
      slider.value = String(index);
      position.textContent = `${word} ${row.frame} (${index + 1} of ${count})`;
    }
  }

  toggle.addEventListener("change", show);
  opacity.addEventListener("input", () => { heat.style.opacity = opacity.value; });
  const controls = element("div", { class: "controls-block" }, camControls);
  if (count > 1) {
    slider = element("input", { type: "range", class: "slice", min: "0", max: String(count - 1), step: "1",
      value: String(index), "aria-label": `${word} of ${name}` });
    slider.addEventListener("input", () => { index = Number(slider.value); show(); });
    figure.addEventListener("keydown", (event) => {  // arrow keys on the picture, as on the slider
      const step = { ArrowLeft: -1, ArrowDown: -1, ArrowRight: 1, ArrowUp: 1 }[event.key];
      if (!step) return;
      event.preventDefault();
      index = Math.min(count - 1, Math.max(0, index + step));
      show();
    });
    controls.prepend(element("div", { class: "controls" },
      element("label", {}, `${word[0].toUpperCase()}${word.slice(1)} `, slider), position,
      element("span", { class: "note", text: " (arrow keys move it)" })));
  }
  card.append(controls);
  if (answer.summary) {
    const s = answer.summary;
    card.append(element("div", { class: "summary" },
      element("h4", { text: `Volume: mean of the ${s.slices_used} of ${s.slices} slices that show a head` }),
      pictureAnswer(s, null)));
  } else if (answer.no_head) {
    card.append(element("p", { class: "summary", text: `Volume: ${answer.no_head}` }));
  }
  show();
  return card;
}

function pictureAnswer(row, title) {
  const box = element("div", { class: "picture-answer" });
  if (title) box.append(element("p", { class: "which", text: title }));
  box.append(element("p", { class: "label" }, element("strong", { class: "label-name", text: row.label }), " ",
    element("span", { class: "label-probability", text: fixed(row.probability) })));
  const bars = element("ul", { class: "bars", "aria-label": "calibrated probability of each class" });
  for (const [name, p] of Object.entries(row.probabilities)) {
    const fill = element("span", { class: "fill" });
    fill.style.width = `${(100 * p).toFixed(1)}%`;
    bars.append(element("li", { "data-class": name, class: name === row.label ? "best" : "" },
      element("span", { class: "name", text: name }),
      element("span", { class: "bar", "aria-hidden": "true" }, fill),
      element("span", { class: "value", text: fixed(p) })));
  }
  box.append(bars);
  if (row.novelty === null) {
    box.append(element("p", { class: "novelty", text: "novelty: no score in this model file" }));
  } else {
    const quantile = Math.round(100 * state.facts.novelty_quantile);
    box.append(element("p", { class: "novelty" }, "novelty ", element("span", { class: "novelty-score",
      text: fixed(row.novelty, 2) }), ` (above 1: less like the Training scans than ${quantile}% of the val scans)`));
    if (row.unlike_training) {
      box.append(element("p", { class: "warning", role: "note" }, element("strong", { text: "Unlike the Training scans. " }),
        "The model has not seen scans like this one (another sequence, another body part, not a brain MRI?), so " +
        "its label and probabilities say little here: check the scan before trusting them."));
    }
  }
  return box;
}

// ---- the table of everything, and its CSV -----------------------------------------------------------------

function csvField(text) {  // as pandas writes it (QUOTE_MINIMAL)
  return /[",\r\n]/.test(text) ? `"${text.replace(/"/g, '""')}"` : text;
}

function addRows(name, answer) {
  const header = ["file", ...answer.csv_header.split(",")];
  if (!state.header) {
    state.header = header;
    $("#table thead").append(element("tr", {}, ...header.map((h) => element("th", { scope: "col", text: h }))));
  }
  const rows = answer.summary ? [...answer.pictures, answer.summary] : answer.pictures;
  rows.forEach((row, i) => {
    state.rows.push(`${csvField(name)},${answer.csv_rows[i]}`);
    const cells = [name, row.frame === null ? "volume" : String(row.frame), row.label, fixed(row.probability),
      ...Object.values(row.probabilities).map((p) => fixed(p))];
    if (row.novelty !== null) cells.push(fixed(row.novelty, 2), row.unlike_training ? "yes" : "no");
    $("#table tbody").append(element("tr", {}, ...cells.map((c) => element("td", { text: c }))));
  });
  $("#download").disabled = false;
}

function downloadCsv() {
  const text = [state.header.join(","), ...state.rows].join("\n") + "\n";
  const url = URL.createObjectURL(new Blob([text], { type: "text/csv" }));
  const link = element("a", { href: url, download: "predictions.csv" });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

// ---- wiring -----------------------------------------------------------------------------------------------

document.addEventListener("DOMContentLoaded", async () => {
  await loadFacts();
  const input = $("#files");
  input.addEventListener("change", () => { addFiles([...input.files]); input.value = ""; });
  const drop = $("#drop");
  drop.addEventListener("dragover", (event) => { event.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    drop.classList.remove("over");
    addFiles([...event.dataTransfer.files]);
  });
  $("#download").addEventListener("click", downloadCsv);
  document.body.dataset.ready = "true";
});
