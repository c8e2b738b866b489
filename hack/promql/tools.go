//go:build tools

// Package main's tools: promtool, built from the same module version as the
// parser (hack/promtool.sh).
package main

import _ "github.com/prometheus/prometheus/cmd/promtool"
