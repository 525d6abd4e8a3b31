package main

import (
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/ambit-mesh/ambit/ambitctl/install"
	"github.com/ambit-mesh/ambit/ambitctl/precheck"
	"github.com/ambit-mesh/ambit/ambitctl/waypoint"
	"github.com/ambit-mesh/ambit/ambitctl/zconfig"
)

// version is set at build time (-ldflags "-X main.version=...").
var version = "dev"

// globals are the flags every command takes.
type globals struct {
	kubeconfig, context string
}

func (g *globals) kube() (*install.Kube, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if g.kubeconfig != "" {
		rules.ExplicitPath = g.kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: g.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("loading the kubeconfig: %w (give --kubeconfig or set KUBECONFIG)", err)
	}
	return install.NewKube(cfg)
}

func newRoot(stdout, stderr io.Writer) *cobra.Command {
	var g globals
	root := &cobra.Command{
		Use:           "ambitctl",
		Short:         "Install and inspect Ambit, the sidecar-less service mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetOut(stdout)
	root.SetErr(stderr)
	root.PersistentFlags().StringVar(&g.kubeconfig, "kubeconfig", "", "path to the kubeconfig (default $KUBECONFIG or ~/.kube/config)")
	root.PersistentFlags().StringVar(&g.context, "context", "", "kubeconfig context to use")
	root.AddCommand(installCmd(&g), uninstallCmd(&g), manifestCmd(), precheckCmd(&g), waypointCmd(&g), ztunnelConfigCmd(&g), versionCmd())
	return root
}

func installCmd(g *globals) *cobra.Command {
	var sets []string
	var timeout time.Duration
	var force bool
	cmd := &cobra.Command{
		Use:   "install [--set profile=ambient] [--set key=value]...",
		Short: "Install Ambit's components and wait until they are ready",
		Long: `Install renders Ambit's charts for a profile (ambient: the CRDs, istiod-lite, the CNI node
agent and ztunnel, plus the Gateway API CRDs if missing; minimal: the CRDs and istiod-lite),
applies them and waits for each component to be ready before the next.

--set keys: ` + strings.Join(install.SettingKeys(), ", "),
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := install.ParseSettings(sets)
			if err != nil {
				return err
			}
			k, err := g.kube()
			if err != nil {
				return err
			}
			if !force {
				for _, r := range precheck.Run(cmd.Context(), k.Client, k.Host) {
					if r.Status == precheck.Fail {
						return fmt.Errorf("precheck: %s: %s (--force installs anyway)", r.Check, r.Message)
					}
				}
			}
			return install.Install(cmd.Context(), k, s, install.Options{Timeout: timeout, Out: cmd.OutOrStdout()})
		},
	}
	cmd.Flags().StringArrayVar(&sets, "set", nil, "install setting key=value (repeatable)")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for each component to be ready")
	cmd.Flags().BoolVar(&force, "force", false, "install even if the precheck fails")
	return cmd
}

func uninstallCmd(g *globals) *cobra.Command {
	var purge bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "uninstall [--purge]",
		Short: "Remove Ambit's components (with --purge also its CRDs and the Istio resources)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := g.kube()
			if err != nil {
				return err
			}
			if err := install.Uninstall(cmd.Context(), k, purge, install.Options{Timeout: timeout, Out: cmd.OutOrStdout()}); err != nil {
				return err
			}
			if !purge {
				return nil
			}
			left, err := install.Leftovers(cmd.Context(), k)
			if err != nil {
				return err
			}
			if len(left) > 0 {
				return fmt.Errorf("after the purge these are still there:\n  %s", strings.Join(left, "\n  "))
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&purge, "purge", false, "also remove the CRDs (and every Istio resource), istiod-lite's CA and the namespace it created")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "how long to wait for each component to go")
	return cmd
}

func manifestCmd() *cobra.Command {
	cmd := &cobra.Command{Use: "manifest", Short: "Work with the manifests ambitctl installs"}
	var sets []string
	gen := &cobra.Command{
		Use:   "generate [--set key=value]...",
		Short: "Print the objects install would apply, as YAML",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := install.ParseSettings(sets)
			if err != nil {
				return err
			}
			ms, err := install.Render(s)
			if err != nil {
				return err
			}
			for _, m := range ms {
				if _, err := io.WriteString(cmd.OutOrStdout(), m.YAML()); err != nil {
					return err
				}
			}
			return nil
		},
	}
	gen.Flags().StringArrayVar(&sets, "set", nil, "install setting key=value (repeatable)")
	cmd.AddCommand(gen)
	return cmd
}

func precheckCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "precheck",
		Short: "Check that the cluster can take Ambit",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			k, err := g.kube()
			if err != nil {
				return err
			}
			failed := 0
			for _, r := range precheck.Run(cmd.Context(), k.Client, k.Host) {
				fmt.Fprintf(cmd.OutOrStdout(), "%s %s: %s\n", r.Status, r.Check, r.Message)
				if r.Status == precheck.Fail {
					failed++
				}
			}
			if failed > 0 {
				return fmt.Errorf("%d check(s) failed", failed)
			}
			return nil
		},
	}
}

func waypointCmd(g *globals) *cobra.Command {
	var ns string
	cmd := &cobra.Command{Use: "waypoint", Short: "Manage waypoints (L7 proxies for a namespace's services)"}
	cmd.PersistentFlags().StringVarP(&ns, "namespace", "n", "default", "namespace of the waypoint")
	client := func() (waypoint.Client, error) {
		k, err := g.kube()
		if err != nil {
			return waypoint.Client{}, err
		}
		return waypoint.Client{Kube: k.Client, Dynamic: k.Dynamic}, nil
	}

	var spec waypoint.Spec
	apply := &cobra.Command{
		Use:   "apply [--name NAME] [--for service|workload|all|none] [--enroll-namespace]",
		Short: "Create or update a waypoint (a Gateway of class istio-waypoint)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			spec.Namespace = ns
			if err := c.Apply(cmd.Context(), spec); err != nil {
				return err
			}
			name := spec.Name
			if name == "" {
				name = waypoint.DefaultName
			}
			fmt.Fprintf(cmd.OutOrStdout(), "waypoint %s/%s applied\n", ns, name)
			if spec.EnrollNamespace {
				fmt.Fprintf(cmd.OutOrStdout(), "namespace %s labelled istio.io/use-waypoint=%s\n", ns, name)
			}
			return nil
		},
	}
	apply.Flags().StringVar(&spec.Name, "name", waypoint.DefaultName, "name of the waypoint")
	apply.Flags().StringVar(&spec.For, "for", "service", "traffic the waypoint handles: "+strings.Join(waypoint.ForValues, ", "))
	apply.Flags().BoolVar(&spec.EnrollNamespace, "enroll-namespace", false, "label the namespace to use this waypoint")

	var allNS bool
	list := &cobra.Command{
		Use:   "list [-A]",
		Short: "List waypoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := client()
			if err != nil {
				return err
			}
			where := ns
			if allNS {
				where = ""
			}
			ws, err := c.List(cmd.Context(), where)
			if err != nil {
				return err
			}
			if len(ws) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "no waypoints")
				return nil
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAMESPACE\tNAME\tFOR\tPROGRAMMED\tADDRESS")
			for _, w := range ws {
				prog := w.Programmed
				if w.Reason != "" {
					prog += " (" + w.Reason + ")"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", w.Namespace, w.Name, w.For, prog, strings.Join(w.Addresses, ","))
			}
			return tw.Flush()
		},
	}
	list.Flags().BoolVarP(&allNS, "all-namespaces", "A", false, "list the waypoints of every namespace")

	var all bool
	del := &cobra.Command{
		Use:   "delete [NAME...] [--all]",
		Short: "Delete waypoints (and the namespace's istio.io/use-waypoint label pointing at them)",
		RunE: func(cmd *cobra.Command, names []string) error {
			if len(names) == 0 && !all {
				names = []string{waypoint.DefaultName}
			}
			if len(names) > 0 && all {
				return errors.New("give waypoint names or --all, not both")
			}
			c, err := client()
			if err != nil {
				return err
			}
			deleted, err := c.Delete(cmd.Context(), ns, names)
			for _, d := range deleted {
				fmt.Fprintf(cmd.OutOrStdout(), "waypoint %s/%s deleted\n", ns, d)
			}
			return err
		},
	}
	del.Flags().BoolVar(&all, "all", false, "delete every waypoint of the namespace")
	cmd.AddCommand(apply, list, del)
	return cmd
}

func ztunnelConfigCmd(g *globals) *cobra.Command {
	var node, output string
	cmd := &cobra.Command{
		Use:       "ztunnel-config workloads|services|policies|certificates [--node NODE] [-o table|json]",
		Short:     "Show what the ztunnels know",
		ValidArgs: zconfig.Sections,
		Args: func(_ *cobra.Command, args []string) error {
			if len(args) != 1 || !slices.Contains(zconfig.Sections, args[0]) {
				return fmt.Errorf("ztunnel-config: name one section: %s", strings.Join(zconfig.Sections, ", "))
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "table" && output != "json" {
				return fmt.Errorf("-o %q: want table or json", output)
			}
			k, err := g.kube()
			if err != nil {
				return err
			}
			c := zconfig.Client{Kube: k.Client, Config: k.Config}
			pods, err := c.Pods(cmd.Context(), node)
			if err != nil {
				return err
			}
			section := args[0]
			var nodes []zconfig.Node
			for _, p := range pods {
				n := zconfig.Node{Name: p.Spec.NodeName}
				if n.Section, err = c.Dump(cmd.Context(), p, section); err != nil {
					return err
				}
				if section == "services" {
					if n.Workloads, err = c.Dump(cmd.Context(), p, "workloads"); err != nil {
						return err
					}
				}
				if output == "json" {
					fmt.Fprintf(cmd.OutOrStdout(), "# ztunnel on %s\n%s", n.Name, n.Section)
				}
				nodes = append(nodes, n)
			}
			if output == "json" {
				return nil
			}
			return zconfig.PrintTable(cmd.OutOrStdout(), section, nodes)
		},
	}
	cmd.Flags().StringVar(&node, "node", "", "only the ztunnel on this node")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json")
	return cmd
}

func versionCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print ambitctl's version",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			fmt.Fprintln(cmd.OutOrStdout(), "ambitctl", version)
		},
	}
}
