/** Relay settings: the plugin's config (plugin.json keys, from the environment or a JSON file) and the relay's own. */
import { readFileSync } from 'node:fs'
import pluginJson from '../plugin.json'
import type { PluginConfig } from '../index'

export interface RelaySettings {
    plugin: PluginConfig
    host: string
    port: number
    /** Null only when running locally without authentication (RELAY_INSECURE_LOCAL=1). */
    secret: string | null
    redisUrl: string | null
    redisPrefix: string
    bodyLimitBytes: number
    /** A slow client is cut off (408) after this. */
    requestTimeoutMs: number
    drainIntervalMs: number
    /** Events that failed again are retried after this (PostHog's runEveryMinute cadence). */
    retryIntervalMs: number
    /** Loopback URL that stands in for Intercom's hosts (the local emulator); null in production. */
    intercomOverride: string | null
    logLevel: string
}

export class RelayConfigError extends Error {}

type Env = Record<string, string | undefined>

/** The keys of plugin.json's config fields: read from the file itself so that they cannot drift. */
export const PLUGIN_KEYS: readonly string[] = (pluginJson.config as { key?: string }[])
    .map((field) => field.key)
    .filter((key): key is string => typeof key === 'string')

/** `intercomApiKey` → `INTERCOM_API_KEY`: the conventional spelling of an environment variable. */
export function envName(key: string): string {
    return key.replace(/([a-z0-9])([A-Z])/g, '$1_$2').toUpperCase()
}

function readConfigFile(path: string): Record<string, unknown> {
    let parsed: unknown
    try {
        parsed = JSON.parse(readFileSync(path, 'utf8'))
    } catch (error) {
        throw new RelayConfigError(`Cannot read RELAY_CONFIG_FILE ${path}: ${(error as Error).message}`)
    }
    if (!parsed || typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new RelayConfigError(`RELAY_CONFIG_FILE ${path} must hold a JSON object of plugin.json keys`)
    }
    const unknown = Object.keys(parsed).filter((key) => !PLUGIN_KEYS.includes(key))
    if (unknown.length > 0) {
        throw new RelayConfigError(
            `RELAY_CONFIG_FILE has unknown keys: ${unknown.join(', ')}. Known keys: ${PLUGIN_KEYS.join(', ')}`
        )
    }
    return parsed as Record<string, unknown>
}

/** File first, then the environment (either spelling) overrides it; values reach the plugin as strings. */
export function pluginConfigFrom(env: Env): PluginConfig {
    const file = env.RELAY_CONFIG_FILE ? readConfigFile(env.RELAY_CONFIG_FILE) : {}
    const config: Record<string, string> = {}
    for (const key of PLUGIN_KEYS) {
        const value = env[key] ?? env[envName(key)] ?? file[key]
        if (value !== undefined && value !== null) config[key] = String(value)
    }
    return config as PluginConfig
}

function numberFrom(env: Env, name: string, fallback: number, min: number): number {
    const raw = env[name]
    if (raw === undefined || raw === '') return fallback
    const value = Number(raw)
    if (!Number.isInteger(value) || value < min) {
        throw new RelayConfigError(`${name} must be an integer ≥ ${min}, got "${raw}"`)
    }
    return value
}

const LOOPBACK = new Set(['127.0.0.1', 'localhost', '[::1]'])

/** The emulator override is for local runs and tests: anything but a loopback http URL is refused. */
function intercomOverrideFrom(env: Env): string | null {
    const raw = env.RELAY_INTERCOM_EMULATOR_URL
    if (!raw) return null
    let url: URL
    try {
        url = new URL(raw)
    } catch {
        throw new RelayConfigError(`RELAY_INTERCOM_EMULATOR_URL is not a URL: "${raw}"`)
    }
    if (!LOOPBACK.has(url.hostname)) {
        throw new RelayConfigError(
            'RELAY_INTERCOM_EMULATOR_URL must point to a loopback address (the local emulator)'
        )
    }
    return url.origin
}

function secretFrom(env: Env): string | null {
    const secret = env.RELAY_SECRET ?? ''
    if (secret.length >= 16) return secret
    if (secret.length > 0) throw new RelayConfigError('RELAY_SECRET must be at least 16 characters long')
    if (env.RELAY_INSECURE_LOCAL === '1') return null
    throw new RelayConfigError(
        'RELAY_SECRET is not set: set it (e.g. `openssl rand -hex 32`) and send it from PostHog as the X-Relay-Secret header, or set RELAY_INSECURE_LOCAL=1 for a local run without authentication'
    )
}

export function relaySettingsFrom(env: Env): RelaySettings {
    return {
        plugin: pluginConfigFrom(env),
        host: env.HOST ?? '0.0.0.0',
        port: numberFrom(env, 'PORT', 8080, 0),
        secret: secretFrom(env),
        redisUrl: env.REDIS_URL || null,
        redisPrefix: env.REDIS_PREFIX ?? 'posthog-intercom-relay:',
        bodyLimitBytes: numberFrom(env, 'RELAY_BODY_LIMIT_BYTES', 1024 * 1024, 1024),
        requestTimeoutMs: numberFrom(env, 'RELAY_REQUEST_TIMEOUT_MS', 30_000, 100),
        drainIntervalMs: numberFrom(env, 'RELAY_DRAIN_INTERVAL_MS', 1000, 50),
        retryIntervalMs: numberFrom(env, 'RELAY_RETRY_INTERVAL_MS', 60_000, 50),
        intercomOverride: intercomOverrideFrom(env),
        logLevel: env.LOG_LEVEL ?? 'info',
    }
}
