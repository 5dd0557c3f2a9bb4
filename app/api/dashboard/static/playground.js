// The playground: one prompt to two models, each answer streamed into its own column as the API sends it.
"use strict";

async function streamAnswer(model, prompt, maxTokens, output, status) {
  output.textContent = "";
  status.textContent = "waiting…";
  const response = await fetch("/v1/chat/completions", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ model, messages: [{ role: "user", content: prompt }], max_tokens: maxTokens, stream: true }),
  });
  if (!response.ok) {
    status.textContent = await errorMessage(response);
    return;
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    const events = buffered.split(/\r?\n\r?\n/);
    buffered = events.pop();
    for (const event of events) {
      const data = event.split(/\r?\n/).filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("");
      if (!data || data === "[DONE]") continue;
      const chunk = JSON.parse(data);
      if (chunk.error) {
        status.textContent = `error: ${chunk.error.message}`;
        return;
      }
      for (const choice of chunk.choices) output.textContent += choice.delta.content || "";
      status.textContent = "streaming…";
    }
  }
  status.textContent = `done · ${output.textContent.length} characters`;
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("playground");
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    const button = form.querySelector("button[type=submit]");
    const prompt = form.prompt.value;
    const maxTokens = Number(form.max_tokens.value);
    button.disabled = true;
    await Promise.all(["a", "b"].map((side) =>
      streamAnswer(document.getElementById(`model-${side}`).value, prompt, maxTokens,
        document.getElementById(`answer-${side}`), document.getElementById(`status-${side}`))
        .catch((error) => { document.getElementById(`status-${side}`).textContent = `error: ${error.message}`; })));
    button.disabled = false;
  });
});
