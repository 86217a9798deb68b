// Lint rules: typescript-eslint everywhere, and for index.ts the globals that PostHog's sandbox lacks.
import js from '@eslint/js'
import { readFileSync } from 'node:fs'
import { fileURLToPath } from 'node:url'
import tseslint from 'typescript-eslint'

/** One list, shared with the runtime test that checks each name is absent in PostHog's sandbox. */
const SANDBOX_ABSENT = JSON.parse(
    readFileSync(fileURLToPath(import.meta.resolve('./tools/runtime/sandbox-absent-globals.json')), 'utf8')
).globals

export default tseslint.config(
    { ignores: ['node_modules/**', 'coverage/**', '*.config.js'] },
    js.configs.recommended,
    ...tseslint.configs.recommended,
    {
        rules: {
            '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_' }],
        },
    },
    {
        // The plugin runs in PostHog's sandbox: no timers, no process, no relative imports.
        files: ['index.ts'],
        rules: {
            'no-restricted-globals': ['error', ...SANDBOX_ABSENT],
            'no-restricted-imports': ['error', { patterns: ['./*', '../*'] }],
        },
    }
)
