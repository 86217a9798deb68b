import js from '@eslint/js'
import tseslint from 'typescript-eslint'

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
            'no-restricted-globals': [
                'error',
                'setTimeout',
                'setInterval',
                'process',
                'AbortController',
                'TextEncoder',
            ],
            'no-restricted-imports': ['error', { patterns: ['./*', '../*'] }],
        },
    }
)
