/** Prometheus metrics of one relay instance (its own registry, so that several can live in one process). */
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client'

/** Reasons come from the plugin's fixed list; anything past this many distinct values is counted as `other`. */
const MAX_REASONS = 50

export interface RelayMetrics {
    registry: Registry
    event(outcome: string, reason: string | undefined): void
    intercomCall(status: string): void
    ack(seconds: number, code: number): void
    drained(result: { delivered: number; retried: number; dropped: number }): void
    /** Set before each scrape: the retry queue's length and the seconds left of Intercom's backoff. */
    onScrape(read: () => Promise<{ queueLength: number; backoffSeconds: number }>): void
}

export function createMetrics(): RelayMetrics {
    const registry = new Registry()
    collectDefaultMetrics({ register: registry })
    const events = new Counter({
        name: 'relay_events_total',
        help: 'Events by outcome (delivered, skipped, synced, queued, refused, retry) and reason',
        labelNames: ['outcome', 'reason'],
        registers: [registry],
    })
    const calls = new Counter({
        name: 'relay_intercom_requests_total',
        help: 'Calls to Intercom by HTTP status (error: no answer)',
        labelNames: ['status'],
        registers: [registry],
    })
    const acks = new Histogram({
        name: 'relay_webhook_seconds',
        help: 'Time to answer a webhook request, by status code',
        labelNames: ['code'],
        buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
        registers: [registry],
    })
    const drain = new Counter({
        name: 'relay_retry_queue_events_total',
        help: 'Events taken off the retry queue, by result (delivered, retried, dropped)',
        labelNames: ['result'],
        registers: [registry],
    })
    let readState: () => Promise<{ queueLength: number; backoffSeconds: number }> = async () => ({
        queueLength: 0,
        backoffSeconds: 0,
    })
    new Gauge({
        name: 'relay_retry_queue_length',
        help: 'Events waiting in the retry queue',
        registers: [registry],
        async collect() {
            // Read at scrape time; a Redis outage leaves the last values.
            const state = await readState().catch(() => null)
            if (state) {
                this.set(state.queueLength)
                backoff.set(state.backoffSeconds)
            }
        },
    })
    const backoff = new Gauge({
        name: 'relay_backoff_seconds',
        help: "Seconds left before Intercom's rate-limit window resets (0: not backing off)",
        registers: [registry],
    })
    const reasons = new Set<string>()
    const boundedReason = (reason: string | undefined): string => {
        const label = reason ?? ''
        if (reasons.has(label) || reasons.size < MAX_REASONS) {
            reasons.add(label)
            return label
        }
        return 'other'
    }
    return {
        registry,
        event: (outcome, reason) => events.inc({ outcome, reason: boundedReason(reason) }),
        intercomCall: (status) => calls.inc({ status }),
        ack: (seconds, code) => acks.observe({ code: String(code) }, seconds),
        drained: (result) => {
            drain.inc({ result: 'delivered' }, result.delivered)
            drain.inc({ result: 'retried' }, result.retried)
            drain.inc({ result: 'dropped' }, result.dropped)
        },
        onScrape: (read) => {
            readState = read
        },
    }
}
