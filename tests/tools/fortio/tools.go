//go:build tools

// Package tools pins the fortio command built from this module so that go.sum covers every
// package it needs.
package tools

import _ "fortio.org/fortio"
