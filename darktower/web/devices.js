// The camera and microphone pickers (enumerateDevices): in the lobby (`#camera-select`,
// `#mic-select`, for the preview and the join) and in the meeting's devices panel
// (`#camera-switch`, `#mic-switch`: the capture's track is replaced, the publication kept:
// localmedia.js's switchDevice). Labels are the browser's (empty before a capture was allowed:
// then "Camera 1" and so on).

const KIND = { video: "videoinput", audio: "audioinput" };
const NAME = { video: "Camera", audio: "Microphone" };

// [{deviceId, label}] of `kind` ("video" | "audio").
export async function listDevices(kind) {
  if (!navigator.mediaDevices?.enumerateDevices) return [];
  const all = await navigator.mediaDevices.enumerateDevices();
  return all
    .filter((d) => d.kind === KIND[kind] && d.deviceId)
    .map((d, i) => ({ deviceId: d.deviceId, label: d.label || `${NAME[kind]} ${i + 1}` }));
}

// Fills `select` with the devices of `kind`, `current` (a deviceId) selected; the select is
// disabled when there is none.
export async function fillPicker(select, kind, current = "") {
  const devices = await listDevices(kind);
  select.replaceChildren(...devices.map((d) => new Option(d.label, d.deviceId)));
  if (devices.length === 0) select.append(new Option(`No ${NAME[kind].toLowerCase()}`, ""));
  select.disabled = devices.length === 0;
  if (current && devices.some((d) => d.deviceId === current)) select.value = current;
  return devices;
}
