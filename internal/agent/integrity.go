package agent

import "sync"

// Integrity reasons (reference agent.md §13), in the order they are shown.
// Once a reason holds it stays for the life of the agent: a cleared tenant
// or a stopped workload may have left changes behind.
const (
	reasonTenant           = "customer_owner_enabled"
	reasonWorkloadDeployed = "customer_workload_deployed"
	reasonExec             = "arbitrary_exec_enabled"
)

var reasonOrder = []string{reasonTenant, reasonWorkloadDeployed, reasonExec}

// integrity records what took the VM out of the fleet's sole control.
type integrity struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (i *integrity) add(reason string) {
	i.mu.Lock()
	defer i.mu.Unlock()
	if i.seen == nil {
		i.seen = map[string]bool{}
	}
	i.seen[reason] = true
}

func (i *integrity) reasons() []string {
	i.mu.Lock()
	defer i.mu.Unlock()

	out := []string{}
	for _, r := range reasonOrder {
		if i.seen[r] {
			out = append(out, r)
		}
	}
	return out
}
