// The Vercel AI SDK as its users run it: one generateText or streamText call with a
// file-writing tool, the SDK running the tool loop. Prints what it got as JSON.
// usage: node ai_sdk.mjs openai|responses|anthropic generate|stream MODEL BASE_URL API_KEY FILE
// ("responses" is @ai-sdk/openai's default, openai(id); "openai" is openai.chat(id))
import { writeFileSync } from "node:fs";
import { createAnthropic } from "@ai-sdk/anthropic";
import { createOpenAI } from "@ai-sdk/openai";
import { generateText, stepCountIs, streamText, tool } from "ai";
import { z } from "zod";

const [sdk, mode, modelId, baseURL, apiKey, file] = process.argv.slice(2);
const openai = createOpenAI({ baseURL: `${baseURL}/v1`, apiKey });
const model =
  sdk === "anthropic"
    ? createAnthropic({ baseURL: `${baseURL}/v1`, apiKey })(modelId)
    : sdk === "responses"
      ? openai(modelId)
      : openai.chat(modelId);

const writeFile = tool({
  description: "Write a text file",
  inputSchema: z.object({ path: z.string(), content: z.string() }),
  execute: async ({ path, content }) => {
    writeFileSync(path, content);
    return "written";
  },
});

const options = {
  model,
  tools: { write_file: writeFile },
  stopWhen: stepCountIs(4),
  maxRetries: 0,
  prompt: `Write the file ${file} with the text: hello from lmgate`,
};

let result;
if (mode === "stream") {
  const stream = streamText({ ...options, onError: ({ error }) => { throw error; } });
  let text = "";
  for await (const delta of stream.textStream) text += delta;
  result = { text, steps: (await stream.steps).length, usage: await stream.totalUsage };
} else {
  const reply = await generateText(options);
  result = { text: reply.text, steps: reply.steps.length, usage: reply.totalUsage };
}
console.log(JSON.stringify(result));
