/** Pacing for the replay: a steady rate of starts (--rate), and a bound on work in flight (--concurrency). */
import { sleep } from '../lib/sleep'

/** Hands out start times `1000 / perSecond` ms apart; each caller reserves its slot synchronously, so concurrent callers keep the spacing. */
export class Pacer {
    private readonly intervalMs: number
    private nextAt = 0

    constructor(
        perSecond: number,
        private readonly signal?: AbortSignal
    ) {
        this.intervalMs = 1000 / perSecond
    }

    async take(): Promise<void> {
        const reservedAt = Math.max(Date.now(), this.nextAt)
        this.nextAt = reservedAt + this.intervalMs
        await sleep(reservedAt - Date.now(), this.signal)
    }
}

/** At most `limit` tasks at once; `acquire` waits for a free slot. */
export class Slots {
    private active = 0
    private readonly waiting: Array<() => void> = []

    constructor(private readonly limit: number) {}

    async acquire(): Promise<void> {
        if (this.active < this.limit) this.active++
        // A released slot passes straight to the next waiter, so `active` never exceeds the limit.
        else await new Promise<void>((resolve) => this.waiting.push(resolve))
    }

    release(): void {
        const next = this.waiting.shift()
        if (next) next()
        else this.active--
    }
}
