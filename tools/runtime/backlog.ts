/** The queue contract, as steps a test or a fault scenario can run against any variant:
 * park a backlog while Intercom answers 5xx, drain it (runEveryMinute where the runtime calls it, else new
 * events through onEvent), and count what Intercom stored against what was sent.
 */
import type { Emulator } from '../intercom/emulator'
import type { RedisCache } from './cache'
import { addCount } from '../lib/report'
import { Slots } from '../lib/slots'
import type { RuntimeEvent, Treatment, VariantRuntime } from './start-variant'

export const BACKLOG_EMAIL = 'ada@example.com'
export const BACKLOG_EVENT = 'signed_up'
export const BACKLOG_CONFIG = { intercomApiKey: 'test-token', triggeringEvents: BACKLOG_EVENT }

/** `count` events of one contact, one second apart, two hours old (past Intercom's search lag). */
export function backlogEvents(count: number, options: { offset?: number; prefix?: string } = {}) {
    const offset = options.offset ?? 0
    const start = Math.floor(Date.now() / 1000) - 2 * 3600
    return Array.from({ length: count }, (_, i) => ({
        uuid: `${options.prefix ?? 'backlog'}-${offset + i}`,
        event: BACKLOG_EVENT,
        distinct_id: 'user-1',
        timestamp: new Date((start - offset - i) * 1000).toISOString(),
        properties: { email: BACKLOG_EMAIL },
    }))
}

/** Runs events through onEvent, `concurrency` at a time, in order of arrival. */
export async function runEvents(
    runtime: Pick<VariantRuntime, 'onEvent'>,
    events: readonly RuntimeEvent[],
    concurrency = 10
): Promise<Treatment[]> {
    const slots = new Slots(concurrency)
    return Promise.all(events.map((event) => slots.run(() => runtime.onEvent(event))))
}

/** What the plugin said about one event (index.ts resolves onEvent to `{status, reason}`). */
export function reportedStatus(treatment: Treatment): string {
    const status = (treatment.value as { status?: unknown } | undefined)?.status
    return treatment.status === 'failed' ? 'failed' : typeof status === 'string' ? status : 'done'
}

export function countBy<T>(items: readonly T[], key: (item: T) => string): Record<string, number> {
    const counts: Record<string, number> = {}
    for (const item of items) addCount(counts, key(item))
    return counts
}

/** Parks events: Intercom answers every request 503 while they arrive. */
export async function park(
    runtime: Pick<VariantRuntime, 'onEvent'>,
    emulator: Emulator,
    events: readonly RuntimeEvent[]
): Promise<Record<string, number>> {
    emulator.configure({ errorRate: 1 })
    try {
        return countBy(await runEvents(runtime, events), reportedStatus)
    } finally {
        emulator.configure({ errorRate: 0 })
    }
}

export interface DrainReport {
    rounds: number
    delivered: number
    dropped: number
    droppedByReason: Record<string, number>
    /** The last `remaining` reported, or the queue length read from Redis. */
    remaining: number
    errors: string[]
}

function emptyReport(): DrainReport {
    return { rounds: 0, delivered: 0, dropped: 0, droppedByReason: {}, remaining: -1, errors: [] }
}

/** Calls runEveryMinute until it reports nothing remaining, at most `maxRounds` times. */
export async function drainByMinutes(runtime: VariantRuntime, maxRounds = 30): Promise<DrainReport> {
    const report = emptyReport()
    if (!runtime.runEveryMinute) throw new Error(`Variant ${runtime.variant.id} has no runEveryMinute`)
    while (report.rounds < maxRounds) {
        report.rounds++
        const treatment = await runtime.runEveryMinute()
        if (treatment.status === 'failed') {
            report.errors.push(treatment.error ?? 'failed')
            continue
        }
        const value = (treatment.value ?? {}) as Partial<Omit<DrainReport, 'rounds' | 'errors'>>
        report.delivered += value.delivered ?? 0
        report.dropped += value.dropped ?? 0
        for (const [reason, n] of Object.entries(value.droppedByReason ?? {}))
            addCount(report.droppedByReason, reason, n)
        report.remaining = value.remaining ?? 0
        if (report.remaining === 0) break
    }
    return report
}

/** The retry queue's length, read straight from Redis. */
export function queueLength(redis: RedisCache, key = 'intercom:retry-queue'): Promise<number> {
    return redis.client.llen(redis.keyOf(key))
}

/**
 * Drains the variant's way: runEveryMinute where the runtime calls it, else (variant 4) new events,
 * one at a time, until the queue is empty or every nudge is sent. `nudged`: the nudges actually sent.
 */
export async function drain(
    runtime: VariantRuntime,
    nudges: readonly RuntimeEvent[] = []
): Promise<DrainReport & { nudged: RuntimeEvent[] }> {
    if (runtime.runEveryMinute) return { ...(await drainByMinutes(runtime)), nudged: [] }
    const nudged: RuntimeEvent[] = []
    for (const event of nudges) {
        if (runtime.redis && (await queueLength(runtime.redis)) === 0) break
        await runtime.onEvent(event)
        nudged.push(event)
    }
    const remaining = runtime.redis ? await queueLength(runtime.redis) : 0
    return { ...emptyReport(), rounds: nudged.length, remaining, nudged }
}

export interface StoredReport {
    expected: number
    /** Expected events Intercom has not stored. */
    missing: number
    /** Stored events that were not expected (should never happen). */
    unexpected: number
    /** POSTs Intercom deduplicated (retries of an event already stored): allowed, at least once. */
    deduplicated: number
}

/** Compares Intercom's stored events with the events sent, by event name and created_at (one contact). */
export function storedReport(emulator: Emulator, events: readonly RuntimeEvent[]): StoredReport {
    const key = (name: string, createdAt: number): string => `${name}@${createdAt}`
    const stored = new Map(emulator.events().map((event) => [key(event.event_name, event.created_at), event]))
    const expected = new Set(
        events.map((event) => key(event.event, Math.floor(Date.parse(event.timestamp) / 1000)))
    )
    let deduplicated = 0
    for (const event of stored.values()) deduplicated += Math.max(event.received - 1, 0)
    return {
        expected: expected.size,
        missing: [...expected].filter((name) => !stored.has(name)).length,
        unexpected: [...stored.keys()].filter((name) => !expected.has(name)).length,
        deduplicated,
    }
}

/** "Time passes beyond every TTL": expires every key of the plugin that has one (locks, backoff, contacts). */
export async function expireVolatileKeys(redis: RedisCache): Promise<number> {
    const keys = await redis.client.keys(`${redis.keyOf('')}*`)
    let expired = 0
    for (const key of keys) {
        if ((await redis.client.pttl(key)) > 0) expired += await redis.client.pexpire(key, 1)
    }
    return expired
}
