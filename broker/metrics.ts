import { Counter, collectDefaultMetrics, Gauge, Histogram, Registry } from "prom-client";

/** The broker's Prometheus metrics, on a registry of its own (one per broker instance). */
export class Metrics {
  readonly registry = new Registry();

  readonly leasesMinted = new Counter({
    name: "jitkey_leases_minted_total",
    help: "Leases issued, by resource and adapter",
    labelNames: ["resource", "adapter"] as const,
    registers: [this.registry],
  });

  readonly leasesRenewed = new Counter({
    name: "jitkey_leases_renewed_total",
    help: "Leases extended, by resource",
    labelNames: ["resource"] as const,
    registers: [this.registry],
  });

  readonly denials = new Counter({
    name: "jitkey_denials_total",
    help: "Requests denied, by what was denied and the error code",
    labelNames: ["decision", "code"] as const,
    registers: [this.registry],
  });

  readonly issueFailures = new Counter({
    name: "jitkey_issue_failures_total",
    help: "Adapter failures while issuing, by resource",
    labelNames: ["resource"] as const,
    registers: [this.registry],
  });

  readonly revocations = new Counter({
    name: "jitkey_revocations_total",
    help: "Leases revoked, by reason and resource",
    labelNames: ["reason", "resource"] as const,
    registers: [this.registry],
  });

  readonly revokeFailures = new Counter({
    name: "jitkey_revoke_failures_total",
    help: "Leases marked revoke_failed after their last attempt, by resource",
    labelNames: ["resource"] as const,
    registers: [this.registry],
  });

  readonly revokeLag = new Histogram({
    name: "jitkey_revoke_lag_seconds",
    help: "Seconds from when a revocation was due (expiry or request) to when the adapter confirmed it",
    labelNames: ["reason"] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300, 900],
    registers: [this.registry],
  });

  readonly reconciled = new Counter({
    name: "jitkey_reconciler_actions_total",
    help: "Leases and tasks the reconciler acted on, by action",
    labelNames: ["action"] as const,
    registers: [this.registry],
  });

  readonly introspections = new Counter({
    name: "jitkey_introspections_total",
    help: "Introspection answers, by result (active, or why inactive)",
    labelNames: ["result"] as const,
    registers: [this.registry],
  });

  readonly webhookDeliveries = new Counter({
    name: "jitkey_webhook_deliveries_total",
    help: "Webhook delivery attempts, by webhook and result (delivered, retrying, failed)",
    labelNames: ["webhook", "result"] as const,
    registers: [this.registry],
  });

  readonly identityRejected = new Counter({
    name: "jitkey_identity_rejected_total",
    help: "Agent identity tokens rejected",
    registers: [this.registry],
  });

  readonly quotaDenials = new Counter({
    name: "jitkey_quota_denials_total",
    help: "Requests refused because a quota was full, by quota",
    labelNames: ["quota"] as const,
    registers: [this.registry],
  });

  readonly quotaLimit = new Gauge({
    name: "jitkey_quota_limit",
    help: "Configured quotas, by quota (absent when unlimited)",
    labelNames: ["quota"] as const,
    registers: [this.registry],
  });

  readonly tasksExpiredUnused = new Counter({
    name: "jitkey_tasks_expired_unused_total",
    help: "Approved tasks ended because no lease was minted within tasks.approvalUnusedSeconds",
    registers: [this.registry],
  });

  readonly liveLeases: Gauge;
  readonly pendingTasks: Gauge;

  constructor(
    options: {
      countLiveLeases?: () => Promise<number>;
      countPendingTasks?: () => Promise<number>;
      defaultMetrics?: boolean;
    } = {},
  ) {
    this.liveLeases = this.countedGauge(
      "jitkey_live_leases",
      "Leases not yet revoked",
      options.countLiveLeases,
    );
    this.pendingTasks = this.countedGauge(
      "jitkey_pending_tasks",
      "Tasks waiting for approval",
      options.countPendingTasks,
    );
    if (options.defaultMetrics) collectDefaultMetrics({ register: this.registry, prefix: "jitkey_process_" });
  }

  /** A gauge read from Redis when scraped. */
  private countedGauge(name: string, help: string, count?: () => Promise<number>): Gauge {
    return new Gauge({
      name,
      help,
      registers: [this.registry],
      async collect() {
        if (count) this.set(await count());
      },
    });
  }
}
