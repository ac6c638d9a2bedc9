// A job's live events in the browser: EventSource on GET /jobs/{id}/events with a short-lived
// stream token (EventSource cannot send headers; the API token never goes in a URL). The
// browser reconnects with Last-Event-ID by itself; a 204 (the job is over, nothing missed) ends it.
"use strict";

import { api } from "./common.js";

export const EVENT_TYPES = ["created", "waiting", "started", "progress", "log", "retried", "failed", "rescued", "released",
  "cancel_requested", "succeeded", "dead", "cancelled", "deleted"];
export const TERMINAL = new Set(["succeeded", "dead", "cancelled", "deleted"]);

// followJob(42, (event) => ...) -> stop(). onEnd() runs once the stream is over for good.
export async function followJob(jobId, onEvent, onEnd = () => {}) {
  let source = null;
  let stopped = false;
  let lastId = 0;
  const open = async () => {
    const { token } = await api("/auth/stream-token", { method: "POST" });
    if (stopped) return;
    const after = lastId ? `&last_event_id=${lastId}` : "";
    source = new EventSource(`/jobs/${encodeURIComponent(jobId)}/events?stream_token=${encodeURIComponent(token)}${after}`);
    for (const type of EVENT_TYPES) {
      source.addEventListener(type, (message) => {
        lastId = Number(message.lastEventId) || lastId;
        const event = JSON.parse(message.data);
        onEvent(event);
        if (TERMINAL.has(event.type)) stop();
      });
    }
    source.onerror = () => {
      // CLOSED: the server ended the stream (a 204 after the end, or a refused token): stop there
      if (source.readyState === EventSource.CLOSED && !stopped) stop();
    };
  };
  const stop = () => {
    if (stopped) return;
    stopped = true;
    if (source) source.close();
    onEnd();
  };
  await open();
  return stop;
}
