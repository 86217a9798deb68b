/** Short locks: one event of a person at a time across instances (so one email is searched once), one drain at a time. */
import { randomBytes } from 'node:crypto'
import type Redis from 'ioredis'

export interface Locks {
    /** Runs `task` while holding `name`, waiting for it up to `waitMs`; rejects when the lock cannot be had. */
    withLock<T>(name: string, task: () => Promise<T>, waitMs: number): Promise<T>
    /** Runs `task` only if `name` is free now; resolves null when another holder has it. */
    ifFree<T>(name: string, task: () => Promise<T>): Promise<T | null>
}

export class LockUnavailable extends Error {}

/** A crashed holder's lock frees itself this soon; a live holder extends it every REFRESH_MS. */
const LOCK_TTL_MS = 10_000
const REFRESH_MS = 3_000
const POLL_MS = 5

/** Deletes the key only if it still holds our token: never release a lock that expired and was taken. */
const RELEASE_SCRIPT = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end`
const REFRESH_SCRIPT = `if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end`

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms))

/** In-process FIFO per name, so that a process never polls Redis against itself. */
function localQueue() {
    const tails = new Map<string, Promise<unknown>>()
    return async <T>(name: string, task: () => Promise<T>): Promise<T> => {
        const previous = tails.get(name) ?? Promise.resolve()
        const run = previous.then(task, task)
        const tail = run.catch(() => undefined)
        tails.set(name, tail)
        try {
            return await run
        } finally {
            if (tails.get(name) === tail) tails.delete(name)
        }
    }
}

export function memoryLocks(): Locks {
    const queue = localQueue()
    const busy = new Set<string>()
    return {
        withLock: (name, task) => queue(name, task),
        ifFree: async (name, task) => {
            if (busy.has(name)) return null
            busy.add(name)
            try {
                return await task()
            } finally {
                busy.delete(name)
            }
        },
    }
}

export function redisLocks(client: Redis, prefix: string): Locks {
    const queue = localQueue()
    const acquire = async (key: string, token: string): Promise<boolean> =>
        (await client.set(key, token, 'PX', LOCK_TTL_MS, 'NX')) === 'OK'
    const release = (key: string, token: string) =>
        client.eval(RELEASE_SCRIPT, 1, key, token).catch(() => undefined)
    const holding = async <T>(key: string, token: string, task: () => Promise<T>): Promise<T> => {
        const refresh = setInterval(() => {
            client.eval(REFRESH_SCRIPT, 1, key, token, LOCK_TTL_MS).catch(() => undefined)
        }, REFRESH_MS)
        try {
            return await task()
        } finally {
            clearInterval(refresh)
            await release(key, token)
        }
    }
    return {
        withLock: (name, task, waitMs) =>
            queue(name, async () => {
                const key = `${prefix}lock:${name}`
                const token = randomBytes(12).toString('hex')
                const deadline = Date.now() + waitMs
                while (!(await acquire(key, token))) {
                    if (Date.now() > deadline) throw new LockUnavailable(`lock ${name} busy for ${waitMs} ms`)
                    await sleep(POLL_MS)
                }
                return holding(key, token, task)
            }),
        ifFree: async (name, task) => {
            const key = `${prefix}lock:${name}`
            const token = randomBytes(12).toString('hex')
            return (await acquire(key, token)) ? holding(key, token, task) : null
        },
    }
}
