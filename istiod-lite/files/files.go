// Package files feeds istiod-lite's model from YAML files in a directory instead of the
// Kubernetes API, so Ambit runs without a cluster: the same kinds, in the same format, as
// kubectl would apply them. The directory is re-read when a file in it changes.
package files

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/util/yaml"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"

	"github.com/ambit-mesh/ambit/istiod-lite/model"
)

// Source reads a directory of YAML manifests into a model.Index.
type Source struct {
	dir   string
	index *model.Index
	log   *slog.Logger
	// loaded maps each object's identity (kind/namespace/name) to the object last applied.
	loaded map[string]runtime.Object
	sum    [32]byte
}

// NewSource returns a Source for dir; logger may be nil.
func NewSource(dir string, index *model.Index, logger *slog.Logger) *Source {
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Source{dir: dir, index: index, log: logger, loaded: map[string]runtime.Object{}}
}

// decoder reads the Kubernetes kinds and Istio's CRD kinds.
var decoder = sync.OnceValues(func() (runtime.Decoder, error) {
	scheme := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, istioscheme.AddToScheme} {
		if err := add(scheme); err != nil {
			return nil, fmt.Errorf("building the file-mode scheme: %w", err)
		}
	}
	return serializer.NewCodecFactory(scheme).UniversalDeserializer(), nil
})

// supportedKinds is said in errors about other kinds.
const supportedKinds = "Pod, Service, EndpointSlice, Node, AuthorizationPolicy, PeerAuthentication"

// Load reads the directory once and applies what changed since the last Load. A file that
// cannot be parsed fails the whole Load and changes nothing, so a half-edited file never
// removes the objects of the others.
func (s *Source) Load() error {
	paths, err := s.manifests()
	if err != nil {
		return err
	}
	objs := map[string]runtime.Object{}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("reading %s: %w", p, err)
		}
		if err := decodeAll(p, b, objs); err != nil {
			return err
		}
	}
	var errs []error
	for id, old := range s.loaded {
		if _, ok := objs[id]; !ok {
			errs = append(errs, s.remove(old))
		}
	}
	for id, obj := range objs {
		if old, ok := s.loaded[id]; ok && equalObjects(old, obj) {
			continue
		}
		errs = append(errs, s.apply(obj))
	}
	s.loaded = objs
	return errors.Join(errs...)
}

func (s *Source) manifests() ([]string, error) {
	var out []string
	err := filepath.WalkDir(s.dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			out = append(out, p)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("listing config directory %s: %w", s.dir, err)
	}
	slices.Sort(out)
	return out, nil
}

// decodeAll decodes the documents of one file into objs, keyed by kind/namespace/name.
func decodeAll(path string, b []byte, objs map[string]runtime.Object) error {
	dec, err := decoder()
	if err != nil {
		return err
	}
	r := yaml.NewYAMLReader(bufioReader(b))
	for i := 1; ; i++ {
		doc, err := r.Read()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: reading document %d: %w", path, i, err)
		}
		if len(bytes.TrimSpace(doc)) == 0 || bytes.Equal(bytes.TrimSpace(doc), []byte("---")) {
			continue
		}
		obj, gvk, err := dec.Decode(doc, nil, nil)
		if err != nil {
			return fmt.Errorf("%s: document %d: %w (supported kinds: %s)", path, i, err, supportedKinds)
		}
		id, ok := identity(obj)
		if !ok {
			return fmt.Errorf("%s: document %d: kind %s is not read in file mode (supported kinds: %s)", path, i, gvk.Kind, supportedKinds)
		}
		if _, dup := objs[id]; dup {
			return fmt.Errorf("%s: document %d: %s is defined twice", path, i, id)
		}
		objs[id] = obj
	}
}

// identity names an object the model reads, with its namespace defaulted.
func identity(obj runtime.Object) (string, bool) {
	switch o := obj.(type) {
	case *corev1.Pod:
		defaultNamespace(&o.Namespace)
		return "Pod/" + o.Namespace + "/" + o.Name, true
	case *corev1.Service:
		defaultNamespace(&o.Namespace)
		return "Service/" + o.Namespace + "/" + o.Name, true
	case *discoveryv1.EndpointSlice:
		defaultNamespace(&o.Namespace)
		return "EndpointSlice/" + o.Namespace + "/" + o.Name, true
	case *corev1.Node:
		return "Node//" + o.Name, true
	case *securityv1.AuthorizationPolicy:
		defaultNamespace(&o.Namespace)
		return "AuthorizationPolicy/" + o.Namespace + "/" + o.Name, true
	case *securityv1.PeerAuthentication:
		defaultNamespace(&o.Namespace)
		return "PeerAuthentication/" + o.Namespace + "/" + o.Name, true
	}
	return "", false
}

func defaultNamespace(ns *string) {
	if *ns == "" {
		*ns = "default"
	}
}

func (s *Source) apply(obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.Pod:
		return s.index.SetPod(o)
	case *corev1.Service:
		return s.index.SetService(o)
	case *discoveryv1.EndpointSlice:
		return s.index.SetEndpointSlice(o)
	case *corev1.Node:
		return s.index.SetNode(o)
	case *securityv1.AuthorizationPolicy:
		return s.index.SetAuthorizationPolicy(o)
	case *securityv1.PeerAuthentication:
		return s.index.SetPeerAuthentication(o)
	}
	return nil
}

func (s *Source) remove(obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.Pod:
		return s.index.DeletePod(o.Namespace, o.Name)
	case *corev1.Service:
		return s.index.DeleteService(o.Namespace, o.Name)
	case *discoveryv1.EndpointSlice:
		return s.index.DeleteEndpointSlice(o.Namespace, o.Name)
	case *corev1.Node:
		return s.index.DeleteNode(o.Name)
	case *securityv1.AuthorizationPolicy:
		return s.index.DeleteAuthorizationPolicy(o.Namespace, o.Name)
	case *securityv1.PeerAuthentication:
		return s.index.DeletePeerAuthentication(o.Namespace, o.Name)
	}
	return nil
}

// Run loads the directory, then re-loads it whenever its files change, until ctx ends.
// Errors after the first load are logged and the last good state is kept.
func (s *Source) Run(ctx context.Context, every time.Duration) error {
	// Fingerprint before loading: an edit in between is then seen as a change at the next tick
	// instead of being taken for what was loaded.
	sum, _ := s.fingerprint()
	if err := s.Load(); err != nil {
		return err
	}
	s.sum = sum
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		}
		sum, err := s.fingerprint()
		if err != nil || sum == s.sum {
			continue
		}
		if err := s.Load(); err != nil {
			s.log.Error("reloading config directory; keeping the previous state", "dir", s.dir, "err", err)
			continue
		}
		s.sum = sum
		s.log.Info("reloaded config directory", "dir", s.dir, "objects", len(s.loaded))
	}
}

// fingerprint hashes the directory's manifests' names and contents.
func (s *Source) fingerprint() ([32]byte, error) {
	paths, err := s.manifests()
	if err != nil {
		return [32]byte{}, err
	}
	h := sha256.New()
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return [32]byte{}, err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", p, len(b))
		h.Write(b)
	}
	var sum [32]byte
	copy(sum[:], h.Sum(nil))
	return sum, nil
}
