/** Product version reported by /live, /health, diagnostics and `stacyvm version`. */
export const VERSION = '0.1.0';
