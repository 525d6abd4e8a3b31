package bpf

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// The sk_lookup program is the one attachment the kernel keeps only through a bpf_link, so
// its link is pinned, one directory per pod netns: PinDir/netns-<inode>/sk_lookup. A netns
// that dies takes the attachment with it but not the pin; gc removes such pins.

const lookupPin = "sk_lookup"

// DefaultPinDir is where New pins by default; it must be on a bpffs.
const DefaultPinDir = "/sys/fs/bpf/ambit"

// checkPinDir makes dir, which must be on a bpffs.
func checkPinDir(dir string) error {
	var st unix.Statfs_t
	parent := dir
	for {
		if err := unix.Statfs(parent, &st); err == nil {
			break
		}
		next := filepath.Dir(parent)
		if next == parent {
			return fmt.Errorf("%w: pin directory %s: nothing of it exists", ErrNotSupported, dir)
		}
		parent = next
	}
	if st.Type != unix.BPF_FS_MAGIC {
		return fmt.Errorf("%w: pin directory %s is not on a bpffs (mount one: mount -t bpf bpf /sys/fs/bpf)", ErrNotSupported, dir)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("creating pin directory: %w", err)
	}
	return nil
}

// netnsInode returns the inode of the calling thread's netns.
func netnsInode() (uint64, error) {
	var st unix.Stat_t
	if err := unix.Stat("/proc/thread-self/ns/net", &st); err != nil {
		return 0, fmt.Errorf("reading netns inode: %w", err)
	}
	return st.Ino, nil
}

func (r *Redirector) lookupPinPath(ino uint64) string {
	return filepath.Join(r.pinDir, "netns-"+strconv.FormatUint(ino, 10), lookupPin)
}

// pinnedLookup returns the pinned sk_lookup link of netns ino if it is still attached to
// that netns, with its program; nil if there is none.
func (r *Redirector) pinnedLookup(ino uint64) (link.Link, *ebpf.Program, error) {
	l, err := link.LoadPinnedLink(r.lookupPinPath(ino), nil)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil, nil
	}
	if err != nil {
		return nil, nil, fmt.Errorf("opening pinned sk_lookup link: %w", err)
	}
	info, err := l.Info()
	if err != nil || info.NetNs() == nil || uint64(info.NetNs().NetnsInode) != ino {
		l.Close()
		return nil, nil, nil
	}
	p, err := ebpf.NewProgramFromID(info.Program)
	if err != nil {
		l.Close()
		return nil, nil, nil
	}
	return l, p, nil
}

// ensureLookup makes prog the sk_lookup program of the calling thread's netns (inode ino),
// atomically replacing the program of an existing link.
func (r *Redirector) ensureLookup(ino uint64, prog *ebpf.Program) error {
	l, old, err := r.pinnedLookup(ino)
	if err != nil {
		return err
	}
	if l != nil {
		defer l.Close()
		old.Close()
		if err := l.Update(prog); err != nil {
			return fmt.Errorf("updating sk_lookup link: %w", err)
		}
		return nil
	}
	path := r.lookupPinPath(ino)
	// A pin of a dead netns with a reused inode number.
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("removing stale sk_lookup pin: %w", err)
	}
	ns, err := os.Open("/proc/thread-self/ns/net")
	if err != nil {
		return fmt.Errorf("opening netns: %w", err)
	}
	defer ns.Close()
	nl, err := link.AttachNetNs(int(ns.Fd()), prog)
	if err != nil {
		return fmt.Errorf("attaching sk_lookup program: %w", err)
	}
	defer nl.Close()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return fmt.Errorf("creating pin directory: %w", err)
	}
	if err := nl.Pin(path); err != nil {
		return fmt.Errorf("pinning sk_lookup link: %w", err)
	}
	return nil
}

// removeLookup unpins (and so detaches) netns ino's sk_lookup link.
func (r *Redirector) removeLookup(ino uint64) error {
	dir := filepath.Dir(r.lookupPinPath(ino))
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("removing sk_lookup pin: %w", err)
	}
	return nil
}

// gc removes the pins of network namespaces that no longer exist.
func (r *Redirector) gc() error {
	entries, err := os.ReadDir(r.pinDir)
	if err != nil {
		return fmt.Errorf("listing pins: %w", err)
	}
	var errs []error
	for _, e := range entries {
		if !strings.HasPrefix(e.Name(), "netns-") {
			continue
		}
		dir := filepath.Join(r.pinDir, e.Name())
		l, err := link.LoadPinnedLink(filepath.Join(dir, lookupPin), nil)
		if err != nil {
			continue // being created, or not ours to judge
		}
		info, err := l.Info()
		l.Close()
		if err == nil && info.NetNs() != nil && info.NetNs().NetnsInode == 0 {
			if err := os.RemoveAll(dir); err != nil {
				errs = append(errs, fmt.Errorf("removing pins of a gone netns: %w", err))
			}
		}
	}
	return errors.Join(errs...)
}
