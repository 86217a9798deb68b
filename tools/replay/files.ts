/** Which files a replay reads: files as given, every file under a folder, or the matches of a glob (`exports/*.jsonl.gz`). */
import { existsSync, readdirSync, statSync } from 'node:fs'
import * as path from 'node:path'

import { UsageError } from '../lib/flags'

const GLOB_CHARS = /[*?[]/

/** `**` any folders, `*` any name part, `?` one character, `[abc]` a class; matched on `/`-separated paths. */
function globToRegExp(pattern: string): RegExp {
    let source = ''
    for (let i = 0; i < pattern.length; i++) {
        const char = pattern[i]
        if (char === '*' && pattern[i + 1] === '*') {
            source += pattern[i + 2] === '/' ? '(?:.*/)?' : '.*'
            i += pattern[i + 2] === '/' ? 2 : 1
        } else if (char === '*') source += '[^/]*'
        else if (char === '?') source += '[^/]'
        else if (char === '[') {
            const end = pattern.indexOf(']', i)
            source += end === -1 ? '\\[' : pattern.slice(i, end + 1)
            i = end === -1 ? i : end
        } else source += char.replace(/[.+^${}()|\\]/g, '\\$&')
    }
    return new RegExp(`^${source}$`)
}

/** The names PostHog gives its exports; other files in a folder (a config, notes) are not exports. */
const EXPORT_NAME = /\.(jsonl|ndjson|csv|parquet)(\.(gz|br))?$/i

/** Every export under `dir`, hidden files (the checkpoints' folder among them) left out, in name order. */
function exportsUnder(dir: string): string[] {
    return filesUnder(dir).filter((file) => EXPORT_NAME.test(file))
}

function filesUnder(dir: string): string[] {
    return readdirSync(dir, { withFileTypes: true })
        .filter((entry) => !entry.name.startsWith('.'))
        .sort((a, b) => a.name.localeCompare(b.name))
        .flatMap((entry) => {
            const full = path.join(dir, entry.name)
            if (entry.isDirectory()) return filesUnder(full)
            return entry.isFile() ? [full] : []
        })
}

/** The folder part of a glob before its first wildcard: where the walk starts. */
function globBase(pattern: string): string {
    const segments = pattern.split('/')
    const fixed = segments.slice(
        0,
        segments.findIndex((segment) => GLOB_CHARS.test(segment))
    )
    return fixed.length === 0 ? '.' : fixed.join('/') || '/'
}

function globMatches(pattern: string): string[] {
    const normalized = pattern.split(path.sep).join('/')
    const base = globBase(normalized)
    if (!existsSync(base)) return []
    const matcher = globToRegExp(path.resolve(base).split(path.sep).join('/') + normalized.slice(base.length))
    return filesUnder(base).filter((file) => matcher.test(path.resolve(file).split(path.sep).join('/')))
}

/**
 * The files named by `inputs`, each once, in the order given. A name that matches nothing is a usage error:
 * a typo must not pass for an empty backfill.
 */
export function expandInputs(inputs: string[]): string[] {
    const files: string[] = []
    for (const input of inputs) {
        let found: string[]
        if (existsSync(input)) found = statSync(input).isDirectory() ? exportsUnder(input) : [input]
        else if (GLOB_CHARS.test(input)) found = globMatches(input)
        else throw new UsageError(`No such file: ${input}`)
        if (found.length === 0)
            throw new UsageError(
                `No export file (.jsonl, .ndjson, .csv, .parquet, maybe .gz or .br) matches ${input}`
            )
        files.push(...found.map((file) => path.resolve(file)))
    }
    return [...new Set(files)]
}

/** A path as the user would type it: relative to the working folder when inside it. */
export function displayPath(file: string): string {
    const relative = path.relative(process.cwd(), file)
    return relative && !relative.startsWith('..') && !path.isAbsolute(relative) ? relative : file
}
