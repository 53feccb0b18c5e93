import { Webhook } from "standardwebhooks";
import type { AuditEvent } from "../audit/audit-log.ts";
import type { Config, NotificationEvent } from "../config.ts";

export type WebhookConfig = Config["notifications"]["webhooks"][number];

/** A delivery the receiver refused or never answered; retried unless `permanent`. */
export class WebhookDeliveryError extends Error {
  constructor(
    message: string,
    readonly permanent: boolean,
  ) {
    super(message);
    this.name = "WebhookDeliveryError";
  }
}

/** One line an approver can act on, for chat formats. */
export function summarize(name: NotificationEvent, event: AuditEvent): string {
  const task = event.taskId ? ` task ${event.taskId}` : "";
  const agent = event.agentId ? ` by ${event.agentId}` : "";
  switch (name) {
    case "task_pending":
      return `jitkey: task${task}${agent} is waiting for approval: "${String(event.goal ?? "")}". Approve with: jitkey approve ${event.taskId ?? ""}`;
    case "lease_revoke_failed":
      return `jitkey: revoking lease ${event.leaseId ?? ""} on ${event.resource ?? "?"} FAILED (${event.reason ?? "unknown"}); it is retried until it succeeds`;
    default:
      return `jitkey: ${name.replace(/_/g, " ")}${task}${event.leaseId ? ` lease ${event.leaseId}` : ""}${agent}${event.reason ? ` (${event.reason})` : ""}`;
  }
}

/**
 * Sends one event to one webhook, signed per the Standard Webhooks spec (`webhook-id`,
 * `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`). The message id is the
 * event id, the same on every retry, so receivers can drop duplicates.
 */
export async function sendWebhook(
  webhook: WebhookConfig,
  delivery: { name: NotificationEvent; event: AuditEvent },
  options: { timeoutMs: number; now: Date },
): Promise<void> {
  const payload =
    webhook.format === "slack"
      ? JSON.stringify({ text: summarize(delivery.name, delivery.event) })
      : JSON.stringify({ type: delivery.name, timestamp: delivery.event.at, data: delivery.event });
  const messageId = `evt_${delivery.event.id}`;
  const signature = new Webhook(webhook.secret).sign(messageId, options.now, payload);
  let response: Response;
  try {
    response = await fetch(webhook.url, {
      method: "POST",
      headers: {
        "content-type": "application/json",
        "user-agent": "jitkey-webhooks",
        "webhook-id": messageId,
        "webhook-timestamp": String(Math.floor(options.now.getTime() / 1000)),
        "webhook-signature": signature,
      },
      body: payload,
      redirect: "error",
      signal: AbortSignal.timeout(options.timeoutMs),
    });
  } catch (error) {
    throw new WebhookDeliveryError(`${webhook.name}: ${(error as Error).name}`, false);
  }
  await response.body?.cancel().catch(() => undefined);
  if (response.ok) return;
  // 4xx other than 408/429 will not get better by retrying the same request.
  const permanent = response.status >= 400 && response.status < 500 && ![408, 429].includes(response.status);
  throw new WebhookDeliveryError(`${webhook.name}: HTTP ${response.status}`, permanent);
}
