// npm run lint: typescript-eslint's recommended and type-checked rules over src, test and
// bench. Where a rule is relaxed, the reason is beside it.
import js from '@eslint/js';
import tseslint from 'typescript-eslint';

export default tseslint.config(
  { ignores: ['dist/**', 'build/**', 'node_modules/**', '.vm/**', 'bin/**', 'eslint.config.mjs'] },
  js.configs.recommended,
  ...tseslint.configs.recommendedTypeChecked,
  {
    files: ['**/*.ts'],
    languageOptions: {
      parserOptions: { projectService: true, tsconfigRootDir: import.meta.dirname },
    },
    rules: {
      // Protocol numbers come off the wire as plain numbers and are compared with the
      // const enums that name them (nbd/constants.ts Cmd, ublk states): that is the point.
      '@typescript-eslint/no-unsafe-enum-comparison': 'off',
      // An async function without await still keeps a Promise-returning signature (test
      // scripts, cleanup steps) and turns a throw into a rejection.
      '@typescript-eslint/require-await': 'off',
      // `const { drop: _, ...rest } = o` is how a key is left out of a copy.
      '@typescript-eslint/no-unused-vars': ['error', { ignoreRestSiblings: true, varsIgnorePattern: '^_', argsIgnorePattern: '^_' }],
    },
  },
  {
    // Tests look for terminal escape sequences (ESC, \x1b) in what the CLI prints.
    files: ['test/**/*.ts'],
    rules: { 'no-control-regex': 'off' },
  },
);
