package cluster

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// modulePath is Ambit's module path, which marks the repository root.
const modulePath = "github.com/ambit-mesh/ambit"

// ModuleRoot finds the root of the Ambit repository from the working directory upwards (tests
// run in their package's directory, the demo at the root).
func ModuleRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", fmt.Errorf("finding working directory: %w", err)
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && strings.HasPrefix(string(b), "module "+modulePath+"\n") {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("not inside the Ambit repository: set Config.BinDir and Config.Images, or run from the repository")
		}
		dir = parent
	}
}
