/** Host-side sleeps for the runtime models: re-run delays that teardown can end at once. */
export interface Sleeper {
    sleep(ms: number): Promise<void>
    /** Resolves every pending sleep now. */
    cancelAll(): void
}

export function createSleeper(): Sleeper {
    const pending = new Map<NodeJS.Timeout, () => void>()
    return {
        sleep: (ms) =>
            new Promise<void>((resolve) => {
                const timer = setTimeout(() => {
                    pending.delete(timer)
                    resolve()
                }, ms)
                pending.set(timer, resolve)
            }),
        cancelAll() {
            for (const [timer, resolve] of pending) {
                clearTimeout(timer)
                resolve()
            }
            pending.clear()
        },
    }
}
