package files

import (
	"bufio"
	"bytes"
	"reflect"

	"k8s.io/apimachinery/pkg/runtime"
)

func bufioReader(b []byte) *bufio.Reader { return bufio.NewReader(bytes.NewReader(b)) }

func equalObjects(a, b runtime.Object) bool { return reflect.DeepEqual(a, b) }
