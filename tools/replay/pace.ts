/** Pacing for the replay: a steady rate of starts (--rate); lib/slots.ts bounds the work in flight. */
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
