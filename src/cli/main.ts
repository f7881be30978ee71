#!/usr/bin/env node
import { VERSION } from '../core/version.js';

console.log(`stacyvm ${VERSION}`);
