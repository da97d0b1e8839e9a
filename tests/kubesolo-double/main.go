// kubesolo-double: a TEST DOUBLE of the KubeSolo binary. It is NOT KubeSolo.
//
// Tests build it (tests/kubesolo_double.py) and put it where the image expects the real binary
// (kubesolo role: kubesolo_binary_src). It must never be the product default.
//
// It enforces KubeSolo's contract with the OS instead of accepting anything:
//   - Arguments and KUBESOLO_* variables are parsed by kingpin v2, the parser KubeSolo uses,
//     with KubeSolo's flags declared under their real names and types (internal/config/flags of
//     portainer/kubesolo; /work/shared/notes/kubesolo-runtime.md). kingpin refuses what KubeSolo
//     refuses: `--bool=true` ("unexpected true"), a repeated flag ("flag 'path' cannot be
//     repeated"), an unknown flag, a positional word. It then exits 1 with kingpin's message.
//   - A container runtime must be able to pivot_root out of the root file system (runc does; the
//     initramfs rootfs refuses with EINVAL): a child in a new mount namespace tries it for real.
//   - --path must be an absolute, writable directory (KubeSolo keeps its PKI and state there).
//   - The node name (the hostname) must be a lowercase RFC 1123 name.
//   - Without --node-ip, a private (RFC 1918) IPv4 address must be up on a non-loopback
//     interface ("could not find non-loopback private IP address").
//
// It reports on /dev/console (else stdout; KUBESOLO_TEST_DOUBLE_LOG=stdout forces stdout), one line each:
//
//	[kubesolo-test-double] pid=PID
//	[kubesolo-test-double] argc=N
//	[kubesolo-test-double] arg[1]=<first argument> ... arg[N]=<last argument>
//	[kubesolo-test-double] flag <name>=<effective value>   (every flag; the Edge id and key as <set>/<unset>)
//	[kubesolo-test-double] meminfo MemTotal=<kB> MemAvailable=<kB> Shmem=<kB>
//	[kubesolo-test-double] nofile=<soft limit>
//	[kubesolo-test-double] listening on :6443
//	[kubesolo-test-double] running
//
// serves TCP port 6443 (KubeSolo's API port: a health gate can check it), and waits. In the NEVER-HEALTHY
// mode it does all of the above but never serves the port (it prints "never-healthy: not serving :6443"
// instead of "listening on :6443") and waits: a KubeSolo that starts and never becomes healthy, for the
// A/B upgrade's rollback tests (tests/test_upgrade.py). The mode is chosen at build time
// (tests/kubesolo_double.py --never-healthy links main.healthMode=never) or, for host-side tests, with
// KUBESOLO_TEST_DOUBLE_NEVER_HEALTHY=1. In the EXIT mode (main.healthMode=exit) it refuses at once after its
// report ("refused: built to exit"): with the exec handover, where it is PID 1, the kernel panics (a broken
// build whose kernel panics, for the same tests). SIGTERM or
// SIGINT prints "... stopping" and exits 0. A refusal prints "[kubesolo-test-double] refused: <why>"
// and exits 1, as KubeSolo exits on a fatal start-up error.
// `--version` prints a version string and exits 0.
package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"regexp"
	"runtime"
	"strings"
	"syscall"

	"gopkg.in/alecthomas/kingpin.v2"
)

const (
	tag        = "[kubesolo-test-double]"
	version    = "v0.0.0-test-double"
	probeEnv   = "KUBESOLO_TEST_DOUBLE_PIVOT_PROBE"
	apiAddress = ":6443"
)

// healthMode: "serve" (default), "never" or "exit" (set with go build -ldflags "-X main.healthMode=never").
var healthMode = "serve"

var (
	app = kingpin.New("kubesolo", "TEST DOUBLE of KubeSolo: parses KubeSolo's flags, checks what KubeSolo needs, runs nothing.")

	// KubeSolo's flags: names, types, defaults and environment twins as upstream declares them.
	versionFlag        = app.Flag("version", "Show the version and exit.").Short('v').Bool()
	path               = app.Flag("path", "Path to the directory containing the kubesolo configuration files.").Envar("KUBESOLO_PATH").Default("/var/lib/kubesolo").String()
	apiserverExtraSANs = app.Flag("apiserver-extra-sans", "Comma-separated extra SANs of the API server certificate.").Envar("KUBESOLO_APISERVER_EXTRA_SANS").Default("").String()
	nodeIP             = app.Flag("node-ip", "Override the auto-detected node IP.").Envar("KUBESOLO_NODE_IP").Default("").String()
	portainerEdgeID    = app.Flag("portainer-edge-id", "Portainer Edge ID.").Envar("KUBESOLO_PORTAINER_EDGE_ID").Default("").String()
	portainerEdgeKey   = app.Flag("portainer-edge-key", "Portainer Edge Key.").Envar("KUBESOLO_PORTAINER_EDGE_KEY").Default("").String()
	portainerEdgeAsync = app.Flag("portainer-edge-async", "Enable Portainer Edge Async Mode.").Envar("KUBESOLO_PORTAINER_EDGE_ASYNC").Default("false").Bool()
	portainerEdgeImage = app.Flag("portainer-edge-image", "Image of the Portainer Edge Agent.").Envar("KUBESOLO_PORTAINER_EDGE_IMAGE").Default("docker.io/portainer/agent:lts").String()
	loadBalancer       = app.Flag("load-balancer", "Enable the load balancer.").Envar("KUBESOLO_LOAD_BALANCER").Default("true").Bool()
	loadBalancerIP     = app.Flag("load-balancer-ip", "IP published as LoadBalancer EXTERNAL-IP.").Envar("KUBESOLO_LOAD_BALANCER_IP").Default("").String()
	localStorage       = app.Flag("local-storage", "Enable local storage.").Envar("KUBESOLO_LOCAL_STORAGE").Default("true").Bool()
	localStorageShared = app.Flag("local-storage-shared-path", "Shared file system path of the local storage.").Envar("KUBESOLO_LOCAL_STORAGE_SHARED_PATH").Default("").String()
	debug              = app.Flag("debug", "Enable debug logging.").Envar("KUBESOLO_DEBUG").Default("false").Bool()
	pprofServer        = app.Flag("pprof-server", "Enable the pprof server.").Envar("KUBESOLO_PPROF_SERVER").Default("false").Bool()
	containerMode      = app.Flag("container-mode", "Run in container mode.").Envar("KUBESOLO_CONTAINER_MODE").Bool()
	full               = app.Flag("full", "Deprecated: no effect.").Envar("KUBESOLO_FULL").Default("false").Bool()
	dbWALRepair        = app.Flag("db-wal-repair", "Repair the SQLite WAL on start-up.").Envar("KUBESOLO_DB_WAL_REPAIR").Default("false").Bool()
	disableIPv6        = app.Flag("disable-ipv6", "Disable IPv6 support.").Envar("KUBESOLO_DISABLE_IPV6").Default("false").Bool()
	startupTimeout     = app.Flag("startup-timeout", "Seconds to wait for each component at start-up.").Envar("KUBESOLO_STARTUP_TIMEOUT").Default("600").Int()
	rfc1123            = regexp.MustCompile(`^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$`)
	console            *os.File
)

func say(format string, args ...interface{}) {
	line := fmt.Sprintf("%s %s\n", tag, fmt.Sprintf(format, args...))
	if console != nil {
		if _, err := console.WriteString(line); err == nil {
			return
		}
	}
	os.Stdout.WriteString(line)
}

func refuse(format string, args ...interface{}) {
	say("refused: "+format, args...)
	fmt.Fprintf(os.Stderr, "kubesolo: error: "+format+"\n", args...)
	os.Exit(1)
}

// pivotProbe runs in a child process in a new mount namespace: it mounts a tmpfs and makes it
// the root with pivot_root(".", "."), as runc does for every container. It changes nothing
// outside that namespace.
func pivotProbe(dir string) int {
	if err := syscall.Mount("", "/", "", syscall.MS_REC|syscall.MS_PRIVATE, ""); err != nil {
		fmt.Fprintf(os.Stderr, "make / private: %v\n", err)
		return 1
	}
	if err := syscall.Mount("tmpfs", dir, "tmpfs", 0, "size=64k"); err != nil {
		fmt.Fprintf(os.Stderr, "mount tmpfs on %s: %v\n", dir, err)
		return 1
	}
	if err := syscall.Chdir(dir); err != nil {
		fmt.Fprintf(os.Stderr, "chdir %s: %v\n", dir, err)
		return 1
	}
	if err := syscall.PivotRoot(".", "."); err != nil {
		fmt.Fprintf(os.Stderr, "pivot_root .: %v\n", err)
		return 1
	}
	return 0
}

func checkPivotRoot(base string) {
	dir := filepath.Join(base, ".kubesolo-test-double-pivot")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		refuse("cannot create %s: %v", dir, err)
	}
	defer os.Remove(dir)
	self, err := os.Executable()
	if err != nil {
		refuse("cannot find own executable: %v", err)
	}
	cmd := exec.Command(self)
	cmd.Env = []string{probeEnv + "=" + dir}
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNS}
	out, err := cmd.CombinedOutput()
	if err != nil {
		refuse("a container runtime cannot pivot_root here (runc: error jailing process inside rootfs): %s",
			strings.TrimSpace(string(out)))
	}
}

func isPrivate(ip net.IP) bool {
	for _, cidr := range []string{"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"} {
		_, block, _ := net.ParseCIDR(cidr)
		if block.Contains(ip) {
			return true
		}
	}
	return false
}

func checkNodeIP() {
	if *nodeIP != "" {
		if net.ParseIP(*nodeIP) == nil {
			refuse("--node-ip %q is not an IP address", *nodeIP)
		}
		return
	}
	ifaces, err := net.Interfaces()
	if err != nil {
		refuse("cannot list network interfaces: %v", err)
	}
	for _, iface := range ifaces {
		if iface.Flags&net.FlagLoopback != 0 || iface.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, _ := iface.Addrs()
		for _, addr := range addrs {
			if ipnet, ok := addr.(*net.IPNet); ok && ipnet.IP.To4() != nil && isPrivate(ipnet.IP) {
				return
			}
		}
	}
	refuse("could not find non-loopback private IP address (give --node-ip)")
}

func secret(value string) string {
	if value == "" {
		return "<unset>"
	}
	return "<set>"
}

func meminfo() string {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "unreadable"
	}
	want := map[string]string{"MemTotal": "", "MemAvailable": "", "Shmem": ""}
	for _, line := range strings.Split(string(data), "\n") {
		fields := strings.Fields(line)
		if len(fields) >= 2 {
			name := strings.TrimSuffix(fields[0], ":")
			if _, ok := want[name]; ok {
				want[name] = fields[1]
			}
		}
	}
	return fmt.Sprintf("MemTotal=%s MemAvailable=%s Shmem=%s", want["MemTotal"], want["MemAvailable"], want["Shmem"])
}

func main() {
	if dir := os.Getenv(probeEnv); dir != "" {
		runtime.LockOSThread()
		os.Exit(pivotProbe(dir))
	}
	// KUBESOLO_TEST_DOUBLE_LOG=stdout (host-side tests) keeps the report off /dev/console.
	if os.Getenv("KUBESOLO_TEST_DOUBLE_LOG") != "stdout" {
		if f, err := os.OpenFile("/dev/console", os.O_WRONLY|syscall.O_NOCTTY, 0); err == nil {
			console = f
		}
	}
	kingpin.MustParse(app.Parse(os.Args[1:]))
	if *versionFlag {
		fmt.Printf("kubesolo %s (test double, not KubeSolo)\n", version)
		os.Exit(0)
	}

	say("pid=%d", os.Getpid())
	say("argc=%d", len(os.Args)-1)
	for i, arg := range os.Args[1:] {
		say("arg[%d]=%s", i+1, arg)
	}
	for _, kv := range [][2]string{
		{"path", *path}, {"apiserver-extra-sans", *apiserverExtraSANs}, {"node-ip", *nodeIP},
		{"portainer-edge-id", secret(*portainerEdgeID)}, {"portainer-edge-key", secret(*portainerEdgeKey)},
		{"portainer-edge-async", fmt.Sprint(*portainerEdgeAsync)}, {"portainer-edge-image", *portainerEdgeImage},
		{"load-balancer", fmt.Sprint(*loadBalancer)}, {"load-balancer-ip", *loadBalancerIP},
		{"local-storage", fmt.Sprint(*localStorage)}, {"local-storage-shared-path", *localStorageShared},
		{"debug", fmt.Sprint(*debug)}, {"pprof-server", fmt.Sprint(*pprofServer)},
		{"container-mode", fmt.Sprint(*containerMode)}, {"full", fmt.Sprint(*full)},
		{"db-wal-repair", fmt.Sprint(*dbWALRepair)}, {"disable-ipv6", fmt.Sprint(*disableIPv6)},
		{"startup-timeout", fmt.Sprint(*startupTimeout)},
	} {
		say("flag %s=%s", kv[0], kv[1])
	}
	say("meminfo %s", meminfo())
	var limit syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &limit); err == nil {
		say("nofile=%d", limit.Cur)
	}

	if !filepath.IsAbs(*path) {
		refuse("--path %q is not an absolute path", *path)
	}
	if err := os.MkdirAll(filepath.Join(*path, "pki"), 0o700); err != nil {
		refuse("cannot create the state directory under --path: %v", err)
	}
	host, err := os.Hostname()
	if err != nil || len(host) > 63 || !rfc1123.MatchString(host) {
		refuse("hostname %q is not a valid node name (lowercase RFC 1123)", host)
	}
	checkNodeIP()
	checkPivotRoot(*path)

	if healthMode == "exit" {
		refuse("built to exit (test double mode exit)")
	}
	if healthMode == "never" || os.Getenv("KUBESOLO_TEST_DOUBLE_NEVER_HEALTHY") == "1" {
		say("never-healthy: not serving %s", apiAddress)
	} else {
		listener, err := net.Listen("tcp", apiAddress)
		if err != nil {
			refuse("cannot listen on %s: %v", apiAddress, err)
		}
		go func() {
			for {
				conn, err := listener.Accept()
				if err != nil {
					return
				}
				conn.Write([]byte(tag + " ok\n"))
				conn.Close()
			}
		}()
		say("listening on %s", apiAddress)
	}

	signals := make(chan os.Signal, 1)
	signal.Notify(signals, syscall.SIGTERM, syscall.SIGINT)
	say("running")
	<-signals
	say("stopping")
	os.Exit(0)
}
