/** Pacing for the replay: a steady rate with pauses, and a bound on work in flight. */
import { sleep } from '../lib/sleep'

export { sleep }

/**
 * Hands out start times `1000 / perSecond` ms apart. Each caller reserves its slot synchronously, so callers
 * that wait concurrently keep the spacing; a pause (Intercom's rate-limit window spent) holds everyone until
 * it ends, including those that already reserved a slot.
 */
export class Pacer {
    private readonly intervalMs: number
    private nextAt = 0
    private pausedUntil = 0

    constructor(
        perSecond: number,
        private readonly signal?: AbortSignal,
        private readonly now: () => number = Date.now
    ) {
        this.intervalMs = Number.isFinite(perSecond) && perSecond > 0 ? 1000 / perSecond : 0
    }

    pauseUntil(untilMs: number): void {
        this.pausedUntil = Math.max(this.pausedUntil, untilMs)
    }

    async take(): Promise<void> {
        const reservedAt = Math.max(this.now(), this.nextAt)
        this.nextAt = reservedAt + this.intervalMs
        for (;;) {
            const wait = Math.max(reservedAt, this.pausedUntil) - this.now()
            if (wait <= 0 || this.signal?.aborted) return
            await sleep(wait, this.signal)
        }
    }
}

/** At most `limit` tasks at once; `acquire` waits for a free slot. */
export class Slots {
    private active = 0
    private readonly waiting: Array<() => void> = []

    constructor(private readonly limit: number) {}

    async acquire(): Promise<void> {
        if (this.active < this.limit) {
            this.active++
            return
        }
        // A released slot passes straight to the next waiter, so `active` never exceeds the limit.
        await new Promise<void>((resolve) => this.waiting.push(resolve))
    }

    release(): void {
        const next = this.waiting.shift()
        if (next) next()
        else this.active--
    }
}
