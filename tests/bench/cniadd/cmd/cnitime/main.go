// Command cnitime is the CNI plugin timer of the cniadd benchmark: see package cnitime.
package main

import (
	"os"

	"github.com/ambit-mesh/ambit/tests/bench/cniadd/cnitime"
)

func main() {
	os.Exit(cnitime.Run())
}
