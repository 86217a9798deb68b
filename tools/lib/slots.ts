/** At most `limit` tasks at once: the replay's --concurrency and the harness's workers share this one gate. */
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

    async run<T>(task: () => Promise<T>): Promise<T> {
        await this.acquire()
        try {
            return await task()
        } finally {
            this.release()
        }
    }
}
