/** Host-side timing for the runtime models: sleeps that teardown can end at once and time limits. */
import { sleep } from '../lib/sleep'

/** Sleeps that teardown can end at once: `cancelAll` resolves every pending sleep now. */
export function createSleeper() {
    let cancel = new AbortController()
    return {
        sleep: (ms: number) => sleep(ms, cancel.signal),
        cancelAll(): void {
            cancel.abort()
            cancel = new AbortController()
        },
    }
}

/** Races `value` against `ms`, rejecting with `timeout()` past it; the timer is cleared once the race is decided. */
export async function withTimeout<T>(
    value: T | Promise<T>,
    ms: number,
    timeout: () => Error,
    timers?: Set<NodeJS.Timeout>
): Promise<T> {
    let timer: NodeJS.Timeout | undefined
    const limit = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(timeout()), ms)
        timers?.add(timer)
    })
    try {
        return await Promise.race([value, limit])
    } finally {
        clearTimeout(timer)
        if (timer) timers?.delete(timer)
    }
}
