/** Drains the plugin's retry queue from the relay, on a timer, under a shared lock.
 *
 * The lock is shared by all instances. A crash
 * mid-drain loses nothing: the plugin removes a queued event only after Intercom accepted it, and Intercom
 * counts an event sent twice once (it deduplicates on contact, event name and created_at).
 */
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
