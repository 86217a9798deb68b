/**
 * An in-memory stand-in for the plugin-server's `meta.cache` (Redis): same methods, same JSON
 * serialisation of values, TTLs in seconds. Several plugin instances can share one, as workers share Redis.
 */
import type { CacheExtension } from '@posthog/plugin-scaffold'

interface Entry {
    value: string | string[]
    expiresAt: number
}

export class MemoryCache implements CacheExtension {
    private entries = new Map<string, Entry>()
    /** Calls per method, so tests and benchmarks can count cache traffic. */
    readonly calls: Record<string, number> = {}

    constructor(private now: () => number = Date.now) {}

    private count(method: string): void {
        this.calls[method] = (this.calls[method] ?? 0) + 1
    }

    private read(key: string): Entry | undefined {
        const entry = this.entries.get(key)
        if (entry && entry.expiresAt <= this.now()) {
            this.entries.delete(key)
            return undefined
        }
        return entry
    }

    private list(key: string): string[] {
        const entry = this.read(key)
        if (!entry) {
            const fresh: Entry = { value: [], expiresAt: Infinity }
            this.entries.set(key, fresh)
            return fresh.value as string[]
        }
        if (!Array.isArray(entry.value)) throw new Error(`WRONGTYPE ${key} is not a list`)
        return entry.value
    }

    set = async (key: string, value: unknown, ttlSeconds?: number): Promise<void> => {
        this.count('set')
        const expiresAt = ttlSeconds ? this.now() + ttlSeconds * 1000 : Infinity
        this.entries.set(key, { value: JSON.stringify(value) ?? 'null', expiresAt })
    }

    get = async (key: string, defaultValue: unknown): Promise<unknown> => {
        this.count('get')
        const entry = this.read(key)
        return entry && typeof entry.value === 'string' ? JSON.parse(entry.value) : defaultValue
    }

    incr = async (key: string): Promise<number> => {
        this.count('incr')
        const entry = this.read(key)
        const next = (entry ? Number(JSON.parse(entry.value as string)) : 0) + 1
        this.entries.set(key, { value: String(next), expiresAt: entry?.expiresAt ?? Infinity })
        return next
    }

    expire = async (key: string, ttlSeconds: number): Promise<boolean> => {
        this.count('expire')
        const entry = this.read(key)
        if (entry) entry.expiresAt = this.now() + ttlSeconds * 1000
        return Boolean(entry)
    }

    lpush = async (key: string, elementOrArray: unknown[]): Promise<number> => {
        this.count('lpush')
        const list = this.list(key)
        const items = Array.isArray(elementOrArray) ? elementOrArray : [elementOrArray]
        for (const item of items) list.unshift(typeof item === 'string' ? item : JSON.stringify(item))
        return list.length
    }

    lrange = async (key: string, start: number, end: number): Promise<string[]> => {
        this.count('lrange')
        const list = this.list(key)
        const from = start < 0 ? list.length + start : start
        const to = end < 0 ? list.length + end : end
        return list.slice(Math.max(0, from), to + 1)
    }

    llen = async (key: string): Promise<number> => {
        this.count('llen')
        return this.list(key).length
    }

    lpop = async (key: string, count: number): Promise<string[]> => {
        this.count('lpop')
        return this.list(key).splice(0, Math.max(0, count))
    }

    lrem = async (key: string, count: number, elementKey: string): Promise<number> => {
        this.count('lrem')
        const list = this.list(key)
        let removed = 0
        for (let i = 0; i < list.length && (count === 0 || removed < Math.abs(count)); ) {
            if (list[i] === elementKey) {
                list.splice(i, 1)
                removed++
            } else i++
        }
        return removed
    }

    /** Every stored string, for leak audits. */
    dump(): string[] {
        return [...this.entries.entries()].flatMap(([key, entry]) => [key, ...[entry.value].flat()])
    }
}
