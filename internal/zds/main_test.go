package zds

import (
	"os"
	"testing"
	"time"

	"github.com/ambit-mesh/ambit/internal/testutil"
)

// TestMain fails the package when its tests leave goroutines or file descriptors behind.
func TestMain(m *testing.M) { os.Exit(testutil.CheckMain(m, 5*time.Second)) }
