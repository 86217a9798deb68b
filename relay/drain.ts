/**
 * Draining the plugin's retry queue from the relay: on a timer, under a lock shared by all instances, and safe
 * against a crash mid-drain. The plugin pops a batch before sending it; a `kill -9` between the two would lose
 * the batch. So the drain's cache records every popped item in a Redis list until the drain ends, and the next
 * drain (on any instance) puts what a crashed one left back on the queue. A recovered event may be sent twice:
 * Intercom counts it once (it deduplicates on contact, event name and created_at).
 */
import type { CacheExtension } from '@posthog/plugin-scaffold'
import type Redis from 'ioredis'
import type { Logger } from 'pino'
import type { DrainResult } from '../index'

export const QUEUE_KEY = 'intercom:retry-queue'

/** Events left untried (rate limit, time budget): drain again this soon, so a reopened window is used at once. */
const BUSY_DRAIN_MS = 100

/**
 * When to drain again: soon while events wait untried, after `retryMs` when every waiting event failed again
 * (the plugin's limits, 10 attempts and the search lag of new contacts, assume a drain a minute), else at the tick.
 */
export function nextDrainIn(
    result: Pick<DrainResult, 'retried' | 'remaining'> | null,
    timing: { intervalMs: number; retryMs: number }
): number {
    if (!result) return timing.intervalMs
    if (result.remaining > result.retried) return BUSY_DRAIN_MS
    return result.retried > 0 ? timing.retryMs : timing.intervalMs
}

/** LPOP with a count, the popped items appended to the in-flight list in the same step. */
const POP_AND_RECORD = `local items = redis.call('LPOP', KEYS[1], ARGV[1])
if items then redis.call('RPUSH', KEYS[2], unpack(items)) end
return items`

/** Moves every in-flight item back onto the queue; returns how many. */
const RECOVER = `local n = 0
while redis.call('RPOPLPUSH', KEYS[1], KEYS[2]) do n = n + 1 end
return n`

export interface DrainGuard {
    /** The cache to give runEveryMinute: like `cache`, but pops are recorded until `done()`. */
    cache: CacheExtension
    /** Puts back what a drain that never finished had popped. */
    recover(): Promise<number>
    /** The drain finished: what it popped is delivered, dropped or back on a queue. */
    done(): Promise<void>
}

/** `prefix` is the cache's key prefix: the in-flight list lives beside the queue. */
export function drainGuard(client: Redis, cache: CacheExtension, prefix: string): DrainGuard {
    const inflight = `${prefix}relay:drain-inflight`
    return {
        cache: {
            ...cache,
            lpop: async (key, count) =>
                ((await client.eval(POP_AND_RECORD, 2, prefix + key, inflight, count)) as string[] | null) ??
                [],
        },
        recover: async () => Number(await client.eval(RECOVER, 2, inflight, prefix + QUEUE_KEY)),
        done: async () => {
            await client.del(inflight)
        },
    }
}

export interface DrainLoop {
    /** No more drains; resolves once the one under way (if any) has finished. */
    stop(): Promise<void>
}

/** Drains on a timer, at the pace nextDrainIn sets; `drain` resolves null when another instance holds the lock. */
export function startDrainLoop(
    drain: () => Promise<Pick<DrainResult, 'retried' | 'remaining'> | null>,
    options: { intervalMs: number; retryMs: number; logger: Logger }
): DrainLoop {
    let stopped = false
    let failing = false
    let timer: NodeJS.Timeout | null = null
    let running: Promise<unknown> = Promise.resolve()
    const tick = () => {
        const run = drain().then(
            (result) => {
                failing = false
                return nextDrainIn(result, options)
            },
            (error: Error) => {
                // Once per outage, not once a second: the queue stays in Redis meanwhile.
                if (!failing)
                    options.logger.warn(
                        { err: { message: error.message } },
                        'retry queue not drained for now'
                    )
                failing = true
                return options.intervalMs
            }
        )
        running = run
        void run.then((delay) => {
            if (!stopped) timer = setTimeout(tick, delay)
        })
    }
    timer = setTimeout(tick, options.intervalMs)
    return {
        async stop() {
            stopped = true
            if (timer) clearTimeout(timer)
            await running
        },
    }
}
